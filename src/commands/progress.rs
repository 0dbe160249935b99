//! Progress of `synchro sync`: a bar per source on a terminal (pages,
//! records, rate), plain lines at most every few seconds otherwise, so that
//! a long first sync in a CI log or a pipe still shows it is moving.
//!
//! With JSON logs (`--log-format json`, or the default when stderr is not a
//! terminal) every line on stderr must be JSON for `jq` and log shippers:
//! progress and the lines that end a `sync` ([`report_run`],
//! [`report_busy`], [`report_line`]) are then tracing events instead.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use tracing::Level;

use crate::engine::{PageObserver, RunReport};
use crate::model::RunOutcome;
use crate::model::SourceKey;
use crate::store::Holder;

/// How often a plain progress line (or event) is printed per source.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// A rate needs this much time behind it: over the first page alone it said
/// `100000/s` (100 records over the 1 ms floor of the division).
const RATE_AFTER: Duration = Duration::from_secs(1);

/// Progress display for one `sync` command.
pub struct Progress {
    mode: Mode,
}

enum Mode {
    Bars {
        multi: MultiProgress,
        bars: HashMap<SourceKey, (ProgressBar, AtomicU64)>,
    },
    Periodic {
        counts: Mutex<HashMap<SourceKey, Counts>>,
        every: Duration,
        sink: Sink,
    },
}

/// Where periodic progress goes.
enum Sink {
    /// Human lines (text logs, not a terminal).
    Text(Mutex<Box<dyn Write + Send>>),
    /// Tracing events (JSON logs).
    Events,
}

#[derive(Clone, Copy)]
struct Counts {
    /// When the first page arrived, and what it carried: the rate is
    /// measured from there.
    first_page: Instant,
    first_records: u64,
    last_line: Instant,
    pages: u64,
    records: u64,
}

impl Progress {
    /// Events with JSON logs, bars when stderr is a terminal, lines otherwise.
    pub fn new(keys: &[SourceKey]) -> Arc<Self> {
        if crate::telemetry::json_logs() {
            return Self::events(LINE_EVERY);
        }
        if !std::io::stderr().is_terminal() {
            return Self::lines(LINE_EVERY, Box::new(std::io::stderr()));
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{spinner} {prefix:.bold} {msg} · {pos} records{rate} · {elapsed}",
        )
        .map(|s| s.with_key("rate", bar_rate))
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bars = keys
            .iter()
            .map(|k| {
                // Styled before it is added: its first frame is complete.
                let bar = multi.add(
                    ProgressBar::new_spinner()
                        .with_style(style.clone())
                        .with_prefix(k.to_string())
                        .with_message("0 pages"),
                );
                bar.enable_steady_tick(Duration::from_millis(200));
                (k.clone(), (bar, AtomicU64::new(0)))
            })
            .collect();
        // Log lines of the runs (warnings, "sync run succeeded") go above
        // the bars, not over a spinner.
        crate::telemetry::log_above(Some(multi.clone()));
        Arc::new(Self {
            mode: Mode::Bars { multi, bars },
        })
    }

    /// Plain lines to `out`, at most one per source every `every`.
    pub fn lines(every: Duration, out: Box<dyn Write + Send>) -> Arc<Self> {
        Self::periodic(every, Sink::Text(Mutex::new(out)))
    }

    /// `info` events ("sync progress"), at most one per source every `every`.
    fn events(every: Duration) -> Arc<Self> {
        Self::periodic(every, Sink::Events)
    }

    fn periodic(every: Duration, sink: Sink) -> Arc<Self> {
        Arc::new(Self {
            mode: Mode::Periodic {
                counts: Mutex::new(HashMap::new()),
                every,
                sink,
            },
        })
    }

    /// The engine callback that feeds this display.
    pub fn observer(self: &Arc<Self>) -> PageObserver {
        let me = self.clone();
        Arc::new(move |key, received| me.page(key, received as u64))
    }

    fn page(&self, key: &SourceKey, received: u64) {
        match &self.mode {
            Mode::Bars { bars, .. } => {
                if let Some((bar, pages)) = bars.get(key) {
                    bar.inc(received);
                    let n = pages.fetch_add(1, Ordering::Relaxed) + 1;
                    bar.set_message(format!("{n} pages"));
                }
            }
            Mode::Periodic {
                counts,
                every,
                sink,
            } => {
                let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                let c = counts.entry(key.clone()).or_insert(Counts {
                    first_page: now,
                    first_records: received,
                    last_line: now,
                    pages: 0,
                    records: 0,
                });
                c.pages += 1;
                c.records += received;
                if c.pages != 1 && now.duration_since(c.last_line) < *every {
                    return;
                }
                c.last_line = now;
                let rate = rate(
                    c.records - c.first_records,
                    now.duration_since(c.first_page),
                );
                match sink {
                    Sink::Text(out) => {
                        let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
                        let _ = writeln!(out, "{}", progress_line(key, c.pages, c.records, rate));
                    }
                    Sink::Events => tracing::info!(
                        tenant = %key.tenant,
                        source = %key.source,
                        pages = c.pages,
                        records = c.records,
                        records_per_second = rate.map(round_rate),
                        "sync progress"
                    ),
                }
            }
        }
    }

    /// Removes the bars before the summary lines are printed, and lets log
    /// lines go straight to stderr again.
    pub fn finish(&self) {
        if let Mode::Bars { multi, bars } = &self.mode {
            for (bar, _) in bars.values() {
                bar.finish_and_clear();
            }
            let _ = multi.clear();
            crate::telemetry::log_above(None);
        }
    }
}

impl Drop for Progress {
    /// A `sync` that ends on an error leaves no bar behind its message.
    fn drop(&mut self) {
        self.finish();
    }
}

/// Records per second over `elapsed`, once it is long enough to mean
/// something ([`RATE_AFTER`]).
fn rate(records: u64, elapsed: Duration) -> Option<f64> {
    (elapsed >= RATE_AFTER).then(|| records as f64 / elapsed.as_secs_f64())
}

/// `12345/s`, `12.3/s`: a whole number from 100 up, one decimal below.
fn format_rate(per_second: f64) -> String {
    let shown = round_rate(per_second);
    if shown >= 100.0 {
        format!("{shown:.0}/s")
    } else {
        format!("{shown:.1}/s")
    }
}

/// The rate to the precision it is shown with (lines, bars and the JSON
/// events alike): whole from 100 up, one decimal below.
fn round_rate(per_second: f64) -> f64 {
    let tenths = (per_second * 10.0).round() / 10.0;
    if tenths >= 100.0 {
        per_second.round()
    } else {
        tenths
    }
}

/// `acme/permits: 12 pages, 1200 records so far (350/s)`; no rate until
/// one means something.
fn progress_line(key: &SourceKey, pages: u64, records: u64, rate: Option<f64>) -> String {
    let head = format!("{key}: {pages} pages, {records} records so far");
    match rate {
        Some(r) => format!("{head} ({})", format_rate(r)),
        None => head,
    }
}

/// The `{rate}` of the bar template: ` · 350/s`, nothing in the first second.
fn bar_rate(state: &ProgressState, out: &mut dyn std::fmt::Write) {
    if let Some(r) = rate(state.pos(), state.elapsed()) {
        let _ = write!(out, " · {}", format_rate(r));
    }
}

/// How `sync` reports the end of one source's run: the human summary line,
/// or with JSON logs an event (`sync finished`) with the fields `tenant`,
/// `source`, `outcome`, `pages`, `upserted`, `deleted`, `elapsed` (seconds)
/// and `error` (when it failed): at `info` for a success, `warn` when
/// cancelled, `error` when failed.
pub(crate) fn report_run(key: &SourceKey, report: &RunReport) {
    if !crate::telemetry::json_logs() {
        eprintln!("{}", super::sync::summary(key, report));
        return;
    }
    let t = &report.totals;
    let elapsed = (report.elapsed.as_secs_f64() * 1000.0).round() / 1000.0;
    let error = t.error.as_deref();
    macro_rules! finished {
        ($level:expr) => {
            tracing::event!(
                $level,
                tenant = %key.tenant,
                source = %key.source,
                outcome = report.outcome.as_str(),
                pages = t.pages,
                upserted = t.upserted,
                deleted = t.deleted,
                elapsed,
                error,
                "sync finished"
            )
        };
    }
    match report.outcome {
        RunOutcome::Success => finished!(Level::INFO),
        RunOutcome::Cancelled => finished!(Level::WARN),
        RunOutcome::Failed => finished!(Level::ERROR),
    }
}

/// How `sync` reports a source another run kept busy: the human line, or
/// with JSON logs a `warn` event with `outcome = "busy"`, the holder and the
/// same line as its message.
pub(crate) fn report_busy(key: &SourceKey, holder: &Holder) {
    let line = super::sync::busy_line(key, holder);
    if !crate::telemetry::json_logs() {
        eprintln!("{line}");
        return;
    }
    tracing::warn!(
        tenant = %key.tenant,
        source = %key.source,
        outcome = "busy",
        holder_pid = holder.pid,
        holder_host = %holder.host,
        holder_run_id = %holder.run_id,
        "{line}"
    );
}

/// Any other line `sync` owes about a source (`KEY: text`), or with JSON
/// logs a `warn` event with `tenant` and `source`.
pub(crate) fn report_line(key: &SourceKey, text: &str) {
    if crate::telemetry::json_logs() {
        tracing::warn!(tenant = %key.tenant, source = %key.source, "{text}");
    } else {
        eprintln!("{key}: {text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap_or_else(|e| e.into_inner()).clone())
                .unwrap_or_default()
        }
    }

    #[test]
    fn plain_lines_show_pages_and_records_without_flooding() {
        let buf = Shared::default();
        let progress = Progress::lines(Duration::from_secs(3600), Box::new(buf.clone()));
        let observe = progress.observer();
        let key = SourceKey::new("acme", "permits");
        for _ in 0..5 {
            observe(&key, 100);
        }
        let text = buf.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "one line, then quiet until `every` passes: {text}"
        );
        // The first page alone gives no rate (not a figure such as 100000/s
        // from a near-zero interval).
        assert_eq!(lines[0], "acme/permits: 1 pages, 100 records so far");

        let progress = Progress::lines(Duration::ZERO, Box::new(buf.clone()));
        let observe = progress.observer();
        observe(&key, 50);
        observe(&key, 50);
        let text = buf.text();
        assert!(
            text.contains("acme/permits: 2 pages, 100 records so far"),
            "{text}"
        );
        assert!(
            !text.contains("/s"),
            "no rate within the first second: {text}"
        );
    }

    #[test]
    fn a_rate_needs_a_second_behind_it() {
        assert_eq!(rate(100, Duration::from_millis(1)), None);
        assert_eq!(rate(100, Duration::from_millis(999)), None);
        assert_eq!(rate(100, Duration::from_secs(2)), Some(50.0));
        assert_eq!(rate(0, Duration::from_secs(3)), Some(0.0));
    }

    #[test]
    fn rates_print_at_most_one_decimal() {
        assert_eq!(format_rate(74918.4567), "74918/s");
        assert_eq!(format_rate(100.0), "100/s");
        assert_eq!(format_rate(99.96), "100/s");
        assert_eq!(format_rate(99.94), "99.9/s");
        assert_eq!(format_rate(12.3456), "12.3/s");
        assert_eq!(format_rate(0.04), "0.0/s");
        assert_eq!(round_rate(1234.5678), 1235.0);
        assert_eq!(round_rate(12.3456), 12.3);
        let key = SourceKey::new("acme", "permits");
        assert_eq!(
            progress_line(&key, 12, 1_200, Some(350.4321)),
            "acme/permits: 12 pages, 1200 records so far (350/s)"
        );
        assert_eq!(
            progress_line(&key, 1, 100, None),
            "acme/permits: 1 pages, 100 records so far"
        );
    }
}
