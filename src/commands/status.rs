//! `synchro status`: what is stored for each configured source.

use std::path::Path;
use std::process::ExitCode;

use super::{CliError, load_config_without_secrets, open_store_read_only};
use crate::store::SourceStatus;

pub async fn status(path: &Path, json: bool) -> Result<ExitCode, CliError> {
    let config = load_config_without_secrets(path)?;
    let store = open_store_read_only(&config).await?;
    let mut rows = Vec::new();
    for s in config.sources() {
        let st = store
            .source_status(&s.key(), s.kind_name())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        rows.push(st);
    }
    store.close().await;
    if json {
        let text = serde_json::to_string_pretty(&rows).map_err(|e| anyhow::anyhow!("{e}"))?;
        println!("{text}");
    } else {
        print!("{}", table(&rows));
    }
    Ok(ExitCode::SUCCESS)
}

/// Longest last error shown in the table (`--json` has it whole).
const ERROR_WIDTH: usize = 100;

/// A plain-text table, one line per source.
pub(crate) fn table(rows: &[SourceStatus]) -> String {
    let now = crate::time::now_us();
    let mut lines = vec![[
        "SOURCE".to_string(),
        "KIND".into(),
        "PHASE".into(),
        "LAST SUCCESS".into(),
        "AGE".into(),
        "RECORDS".into(),
        "DELETED".into(),
        "REPORTS PENDING".into(),
        "SYNCING NOW".into(),
        "LAST ERROR".into(),
    ]];
    for r in rows {
        let age = r
            .last_success
            .as_deref()
            .and_then(crate::time::parse_us)
            .map(|t| {
                let secs = (now.saturating_sub(t) / 1_000_000).max(0) as u64;
                humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
            });
        let reports = if r.failed_reports > 0 {
            format!("{} ({} refused)", r.pending_reports, r.failed_reports)
        } else {
            r.pending_reports.to_string()
        };
        let error = r.last_error.clone().map_or_else(
            || "-".to_string(),
            |e| {
                let one_line = e.replace(['\n', '\r'], " ");
                if one_line.chars().count() > ERROR_WIDTH {
                    let cut: String = one_line.chars().take(ERROR_WIDTH).collect();
                    format!("{cut}…")
                } else {
                    one_line
                }
            },
        );
        lines.push([
            format!("{}/{}", r.tenant, r.source),
            r.kind.clone(),
            r.phase.clone(),
            r.last_success.clone().unwrap_or_else(|| "never".into()),
            age.unwrap_or_else(|| "-".into()),
            r.records.to_string(),
            r.deleted_records.to_string(),
            reports,
            r.lease_holder
                .as_ref()
                .map_or_else(|| "-".to_string(), ToString::to_string),
            error,
        ]);
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
    for l in &lines {
        for (i, w) in widths.iter().enumerate() {
            out.push_str(&format!("{:<w$}  ", l[i], w = *w));
        }
        out.push_str(&l[last]);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_every_column_and_a_short_error() {
        let rows = [SourceStatus {
            tenant: "acme".into(),
            source: "permits".into(),
            kind: "demarches".into(),
            phase: "incremental".into(),
            last_success: Some(crate::time::format_us(crate::time::now_us() - 90_000_000)),
            last_error: Some("x".repeat(300)),
            records: 12,
            pending_reports: 3,
            failed_reports: 1,
            ..Default::default()
        }];
        let t = table(&rows);
        let mut lines = t.lines();
        let head = lines.next().expect("header");
        for col in [
            "SOURCE",
            "KIND",
            "PHASE",
            "LAST SUCCESS",
            "AGE",
            "RECORDS",
            "REPORTS PENDING",
            "LAST ERROR",
        ] {
            assert!(head.contains(col), "{head}");
        }
        let row = lines.next().expect("row");
        assert!(row.starts_with("acme/permits"), "{row}");
        assert!(row.contains("1m 30s") || row.contains("1m 31s"), "{row}");
        assert!(row.contains("3 (1 refused)"), "{row}");
        assert!(row.ends_with('…') && row.len() < 300, "{row}");
    }
}
