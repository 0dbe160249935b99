//! Progress of `synchro sync`: a bar per source on a terminal (pages,
//! records, rate), plain lines at most every few seconds otherwise, so that
//! a long first sync in a CI log or a pipe still shows it is moving.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::SourceKey;
use crate::engine::PageObserver;

/// How often a plain progress line is printed per source.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// Progress display for one `sync` command.
pub struct Progress {
    mode: Mode,
}

enum Mode {
    Bars {
        _multi: MultiProgress,
        bars: HashMap<SourceKey, (ProgressBar, AtomicU64)>,
    },
    Lines {
        counts: Mutex<HashMap<SourceKey, Counts>>,
        every: Duration,
        out: Mutex<Box<dyn Write + Send>>,
    },
}

#[derive(Clone, Copy)]
struct Counts {
    started: Instant,
    last_line: Instant,
    pages: u64,
    records: u64,
}

impl Progress {
    /// Bars when stderr is a terminal, lines otherwise.
    pub fn new(keys: &[SourceKey]) -> Arc<Self> {
        let mode = if std::io::stderr().is_terminal() {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{spinner} {prefix:.bold} {msg} · {pos} records · {per_sec} · {elapsed}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
            let bars = keys
                .iter()
                .map(|k| {
                    let bar = multi.add(ProgressBar::new_spinner());
                    bar.set_style(style.clone());
                    bar.set_prefix(k.to_string());
                    bar.set_message("0 pages");
                    bar.enable_steady_tick(Duration::from_millis(200));
                    (k.clone(), (bar, AtomicU64::new(0)))
                })
                .collect();
            Mode::Bars {
                _multi: multi,
                bars,
            }
        } else {
            return Self::lines(LINE_EVERY, Box::new(std::io::stderr()));
        };
        Arc::new(Self { mode })
    }

    /// Plain lines to `out`, at most one per source every `every`.
    pub fn lines(every: Duration, out: Box<dyn Write + Send>) -> Arc<Self> {
        Arc::new(Self {
            mode: Mode::Lines {
                counts: Mutex::new(HashMap::new()),
                every,
                out: Mutex::new(out),
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
            Mode::Lines { counts, every, out } => {
                let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                let c = counts.entry(key.clone()).or_insert(Counts {
                    started: now,
                    last_line: now,
                    pages: 0,
                    records: 0,
                });
                c.pages += 1;
                c.records += received;
                if c.pages == 1 || now.duration_since(c.last_line) >= *every {
                    c.last_line = now;
                    let rate =
                        c.records as f64 / now.duration_since(c.started).as_secs_f64().max(0.001);
                    let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = writeln!(
                        out,
                        "{key}: {} pages, {} records so far ({rate:.0}/s)",
                        c.pages, c.records
                    );
                }
            }
        }
    }

    /// Removes the bars before the summary lines are printed.
    pub fn finish(&self) {
        if let Mode::Bars { bars, .. } = &self.mode {
            for (bar, _) in bars.values() {
                bar.finish_and_clear();
            }
        }
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

    #[test]
    fn plain_lines_show_pages_records_and_rate_without_flooding() {
        let buf = Shared::default();
        let progress = Progress::lines(Duration::from_secs(3600), Box::new(buf.clone()));
        let observe = progress.observer();
        let key = SourceKey::new("acme", "permits");
        for _ in 0..5 {
            observe(&key, 100);
        }
        let text = String::from_utf8(buf.0.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "one line, then quiet until `every` passes: {text}"
        );
        assert!(
            lines[0].starts_with("acme/permits: 1 pages, 100 records so far ("),
            "{text}"
        );
        assert!(lines[0].ends_with("/s)"), "{text}");

        let progress = Progress::lines(Duration::ZERO, Box::new(buf.clone()));
        let observe = progress.observer();
        observe(&key, 50);
        observe(&key, 50);
        let text = String::from_utf8(buf.0.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default();
        assert!(
            text.contains("acme/permits: 2 pages, 100 records so far"),
            "{text}"
        );
    }
}
