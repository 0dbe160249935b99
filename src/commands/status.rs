//! `synchro status`: what is stored for each configured source.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use super::{CliError, load_config_without_secrets, open_store_read_only};
use crate::store::{ReplicaStatus, SourceStatus};

pub async fn status(path: &Path, json: bool, replicas: bool) -> Result<ExitCode, CliError> {
    let config = load_config_without_secrets(path)?;
    let store = open_store_read_only(&config).await?;
    let text = if replicas {
        let list = store.replicas().await;
        store.close().await;
        let list = list?;
        if json {
            json_text(&list)?
        } else {
            replica_table(&list, crate::time::now_us())
        }
    } else {
        let mut rows = Vec::new();
        for s in config.sources() {
            let st = store.source_status(&s.key(), s.kind_name()).await?;
            rows.push(st);
        }
        // The daemons in one line under the table (`--replicas` lists them).
        let daemons = store.replicas().await;
        store.close().await;
        if json {
            json_text(&rows)?
        } else {
            let mut text = table(&rows);
            if let Ok(daemons) = daemons {
                text.push_str(&replica_summary(&daemons));
            }
            text
        }
    };
    write_out(&mut std::io::stdout().lock(), &text).context("cannot write the status")?;
    Ok(ExitCode::SUCCESS)
}

fn json_text(value: &impl serde::Serialize) -> Result<String, CliError> {
    let text = serde_json::to_string_pretty(value).map_err(anyhow::Error::from)?;
    Ok(format!("{text}\n"))
}

/// `daemons: 3 live (host-a pid 12, ...), 1 gone`, or nothing when no
/// daemon ever ran on this database.
fn replica_summary(list: &[ReplicaStatus]) -> String {
    if list.is_empty() {
        return String::new();
    }
    let live: Vec<String> = list
        .iter()
        .filter(|r| r.live)
        .map(|r| format!("{} pid {}", r.host, r.pid))
        .collect();
    let gone = list.len() - live.len();
    let mut line = format!("\ndaemons: {} live", live.len());
    if !live.is_empty() {
        line.push_str(&format!(" ({})", live.join(", ")));
    }
    if gone > 0 {
        line.push_str(&format!(
            ", {gone} gone (no heartbeat for 15s; see --replicas)"
        ));
    }
    line.push('\n');
    line
}

/// `synchro status --replicas`: one line per daemon.
fn replica_table(list: &[ReplicaStatus], now_us: i64) -> String {
    let mut out = format!(
        "{:<24}  {:>8}  {:<10}  {:<11}  {}\n",
        "HOST", "PID", "STARTED", "SEEN", "STATE"
    );
    for r in list {
        out.push_str(&format!(
            "{:<24}  {:>8}  {:<10}  {:<11}  {}\n",
            cut(&r.host, 24),
            r.pid,
            short_time(r.started_us, now_us),
            format!("{} ago", short_age((now_us - r.seen_us).max(0))),
            if r.live { "live" } else { "gone" }
        ));
    }
    out
}

/// Writes `text` to `out`. A reader that stopped reading (`status | head`)
/// is not an error: `println!` panicked with a backtrace there.
fn write_out(out: &mut impl Write, text: &str) -> std::io::Result<()> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Widest line of the table: a 100-column terminal, or a ticket, shows it
/// unwrapped for typical source names.
const TABLE_WIDTH: usize = 100;

/// A plain-text table, one line per source, each followed by indented lines
/// for what does not fit a column (cut to [`TABLE_WIDTH`]): the run syncing
/// the source now (`syncing now: pid 1234@host-a since 12:03:01Z, run
/// 3f2a…`) and the last error when the last run did not succeed. Times are
/// UTC to the second: `12:03:01Z` for today (UTC), `2026-12-01 12:03:01Z`
/// before. `OUTCOME` is the last run's, `running` while a run holds the
/// source. `--json` has every field whole.
pub(crate) fn table(rows: &[SourceStatus]) -> String {
    table_at(rows, crate::time::now_us())
}

/// [`table`] as seen at `now_us` (µs since the epoch).
fn table_at(rows: &[SourceStatus], now_us: i64) -> String {
    let mut lines = vec![[
        "SOURCE".to_string(),
        "KIND".into(),
        "PHASE".into(),
        "OUTCOME".into(),
        "LAST SUCCESS".into(),
        "AGE".into(),
        "RECORDS".into(),
        "REPORTS".into(),
    ]];
    let mut details = vec![Vec::new()];
    for r in rows {
        let last_success = r.last_success.as_deref().and_then(crate::time::parse_us);
        let reports = if r.failed_reports > 0 {
            format!("{} ({} refused)", r.pending_reports, r.failed_reports)
        } else {
            r.pending_reports.to_string()
        };
        let outcome = match (&r.lease_holder, &r.last_outcome) {
            (Some(_), _) => "running".to_string(),
            (None, Some(o)) => o.clone(),
            (None, None) => "-".to_string(),
        };
        lines.push([
            format!("{}/{}", r.tenant, r.source),
            r.kind.clone(),
            r.phase.clone(),
            outcome,
            last_success.map_or_else(|| "never".to_string(), |t| short_time(t, now_us)),
            last_success.map_or_else(|| "-".to_string(), |t| short_age(now_us - t)),
            r.records.to_string(),
            reports,
        ]);
        let mut more = Vec::new();
        if let Some(h) = &r.lease_holder {
            more.push(format!(
                "syncing now: pid {}@{} since {}, run {}",
                h.pid,
                h.host,
                short_time(h.since_us, now_us),
                h.run_id
            ));
        }
        if let Some(e) = &r.last_error {
            more.push(format!("last error: {}", e.replace(['\n', '\r'], " ")));
        }
        details.push(
            more.into_iter()
                .map(|m| cut(&format!("  {m}"), TABLE_WIDTH))
                .collect(),
        );
    }
    let last = lines[0].len() - 1;
    let widths: Vec<usize> = (0..last)
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (l, more) in lines.iter().zip(&details) {
        for (i, w) in widths.iter().enumerate() {
            out.push_str(&format!("{:<w$}  ", l[i], w = *w));
        }
        out.push_str(&l[last]);
        out.push('\n');
        for m in more {
            out.push_str(m);
            out.push('\n');
        }
    }
    out
}

/// `45s`, `1m 30s`, `3h 5m`, `12d 4h`: the two largest units, to the second
/// under a minute.
fn short_age(us: i64) -> String {
    let s = (us / 1_000_000).max(0);
    let (d, h, m, s) = (s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// `12:03:01Z` on the same UTC day as `now_us`, `2026-12-01 12:03:01Z`
/// otherwise: to the second, as short as unambiguous.
fn short_time(us: i64, now_us: i64) -> String {
    let (Some(t), Some(now)) = (
        chrono::DateTime::from_timestamp_micros(us),
        chrono::DateTime::from_timestamp_micros(now_us),
    ) else {
        return crate::time::format_us(us);
    };
    if t.date_naive() == now.date_naive() {
        t.format("%H:%M:%SZ").to_string()
    } else {
        t.format("%Y-%m-%d %H:%M:%SZ").to_string()
    }
}

/// `text` cut to `width` characters, the last one `…` when cut.
fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let kept: String = text.chars().take(width.saturating_sub(1)).collect();
    format!("{kept}…")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Holder;

    /// 2026-12-04 12:03:01.5Z.
    const NOW: i64 = 1_796_385_781_500_000;

    fn typical() -> SourceStatus {
        SourceStatus {
            tenant: "acme".into(),
            source: "permits".into(),
            kind: "demarches".into(),
            phase: "incremental".into(),
            last_success: Some(crate::time::format_us(NOW - 90_000_000)),
            last_outcome: Some("failed".into()),
            last_error: Some(format!(
                "credentials rejected for acme/permits: {}",
                "x".repeat(300)
            )),
            records: 123_456,
            pending_reports: 3,
            failed_reports: 1,
            ..Default::default()
        }
    }

    #[test]
    fn the_table_fits_100_columns_with_an_outcome_and_times_to_the_second() {
        assert_eq!(crate::time::format_us(NOW), "2026-12-04T12:03:01.500000Z");
        let mut held = typical();
        held.source = "team".into();
        held.kind = "calendar".into();
        held.last_outcome = Some("success".into());
        held.last_error = None;
        held.last_success = Some(crate::time::format_us(NOW - 3 * 86_400_000_000));
        held.lease_holder = Some(Holder {
            host: "host-a".into(),
            pid: 41_234,
            run_id: "3f2a9c01b2d4".into(),
            since_us: NOW - 5_000_000,
            expires_us: NOW + 25_000_000,
        });
        let never = SourceStatus {
            tenant: "acme".into(),
            source: "content".into(),
            kind: "content".into(),
            phase: "full".into(),
            ..Default::default()
        };
        let t = table_at(&[typical(), held, never], NOW);
        for line in t.lines() {
            let n = line.chars().count();
            assert!(n <= 100, "{n} chars: {line}\n{t}");
        }
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 6, "{t}");
        let head = lines[0];
        for col in [
            "SOURCE",
            "KIND",
            "PHASE",
            "OUTCOME",
            "LAST SUCCESS",
            "AGE",
            "RECORDS",
            "REPORTS",
        ] {
            assert!(head.contains(col), "{head}");
        }
        let column = |row: &str, name: &str| {
            let at = head.find(name).expect("column");
            row[at..].split("  ").next().unwrap_or_default().to_string()
        };

        let row = lines[1];
        assert!(row.starts_with("acme/permits "), "{row}");
        assert_eq!(column(row, "OUTCOME"), "failed");
        // Today: the time of day, to the second, no µs.
        assert_eq!(column(row, "LAST SUCCESS"), "12:01:31Z");
        assert_eq!(column(row, "AGE"), "1m 30s");
        assert_eq!(column(row, "RECORDS"), "123456");
        assert!(row.ends_with("3 (1 refused)"), "{row}");
        assert!(!t.contains("500000"), "{t}");
        let error = lines[2];
        assert!(
            error.starts_with("  last error: credentials rejected for acme/permits: xxx"),
            "{error}"
        );
        assert!(
            error.ends_with('…') && error.chars().count() == 100,
            "{error}"
        );

        let row = lines[3];
        assert!(row.starts_with("acme/team "), "{row}");
        assert_eq!(column(row, "OUTCOME"), "running");
        // An older day: the date too.
        assert_eq!(column(row, "LAST SUCCESS"), "2026-12-01 12:03:01Z");
        assert_eq!(column(row, "AGE"), "3d 0h");
        assert_eq!(
            lines[4],
            "  syncing now: pid 41234@host-a since 12:02:56Z, run 3f2a9c01b2d4"
        );

        let row = lines[5];
        assert!(row.starts_with("acme/content "), "{row}");
        assert_eq!(column(row, "OUTCOME"), "-");
        assert_eq!(column(row, "LAST SUCCESS"), "never");
    }

    /// A reader that went away, as `status | head` leaves it.
    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_ends_the_output_quietly() {
        assert!(write_out(&mut ClosedPipe, "SOURCE ...\n").is_ok());
        let mut full = [0u8; 2];
        let err = write_out(&mut &mut full[..], "more than two bytes").expect_err("full");
        assert_eq!(err.kind(), std::io::ErrorKind::WriteZero);
    }

    #[test]
    fn ages_keep_two_units() {
        assert_eq!(short_age(0), "0s");
        assert_eq!(short_age(59_900_000), "59s");
        assert_eq!(short_age(90_000_000), "1m 30s");
        assert_eq!(short_age((3 * 3600 + 5 * 60 + 7) * 1_000_000), "3h 5m");
        assert_eq!(short_age((12 * 86_400 + 4 * 3600) * 1_000_000), "12d 4h");
        assert_eq!(short_age(-5), "0s");
    }

    #[test]
    fn replicas_are_listed_live_first_and_summed_up_under_the_table() {
        let now = 1_800_000_000_000_000;
        let rows = vec![
            ("b-host".to_string(), 7, now - 600_000_000, now - 60_000_000),
            (
                "a-host".to_string(),
                12,
                now - 3_600_000_000,
                now - 2_000_000,
            ),
            ("c-host".to_string(), 3, now - 60_000_000, now - 1_000_000),
        ];
        let list = crate::store::replica_list_for_tests(rows, now);
        let table = replica_table(&list, now);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("HOST"), "{table}");
        assert!(
            lines[1].starts_with("a-host") && lines[1].ends_with("live"),
            "{table}"
        );
        assert!(
            lines[2].starts_with("c-host") && lines[2].ends_with("live"),
            "{table}"
        );
        assert!(
            lines[3].starts_with("b-host") && lines[3].ends_with("gone"),
            "{table}"
        );
        assert!(lines[3].contains("1m 0s ago"), "{table}");
        assert_eq!(
            replica_summary(&list),
            "\ndaemons: 2 live (a-host pid 12, c-host pid 3), 1 gone (no heartbeat for 15s; see --replicas)\n"
        );
        assert_eq!(replica_summary(&[]), "");
    }
}
