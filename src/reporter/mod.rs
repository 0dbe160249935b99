//! Sends the outbox's write-backs (Contentor's import-state reports) to
//! their upstream. It runs beside the syncs and never blocks or fails them:
//! each report is one attempt through the shared client (its host budget,
//! metrics and redaction), built and judged by the kind's [`WriteBack`]; a
//! transient failure is retried later with back-off, kept durably in the
//! outbox, so a restart loses nothing; a success is recorded at once and
//! the report is never sent again.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::SourceConfig;
use crate::http::{HttpClient, HttpError};
use crate::model::SourceKey;
use crate::sources::{Delivery, Outgoing, WriteBack};
use crate::store::{PendingReport, Store, StoreError};
use crate::time::now_us;
/// First retry delay, doubled per attempt (with jitter) up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Longest sleep of an idle reporter: new reports of this process wake it
/// at once (see [`Store::outbox_queued`]); this only bounds how late it sees
/// reports queued by another process. Each wait is shortened by up to 10 %
/// at random so that a thousand reporters do not query together.
const IDLE_POLL: Duration = Duration::from_secs(60);
/// Reports sent per pass at most.
const BATCH: i64 = 50;
/// How long a report's claim keeps other processes off it: it covers up to
/// [`CLAIM_BATCH`] sends (a few seconds each, plus waits for the host's
/// budget) and their bookkeeping, with a wide margin. Claims not used are
/// given back at once; a dead claimer's lapse (or, on its machine, at once).
const CLAIM: Duration = Duration::from_secs(300);
/// Reports claimed at once: [`CLAIM`] covers their sends several times over.
const CLAIM_BATCH: i64 = 10;

/// The reporter of one source whose kind writes back.
#[derive(Clone)]
pub struct Reporter {
    store: Store,
    /// The daemon's shared client, counting for this source, one attempt
    /// per send: the outbox is what retries.
    http: HttpClient,
    key: SourceKey,
    write_back: Arc<dyn WriteBack>,
}

/// What one pass over the due reports did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub sent: usize,
    /// Set when an attempt failed: how long to leave the endpoint alone.
    pub pause: Option<Duration>,
}

impl Reporter {
    /// The reporter of `cfg`, if its kind writes back.
    pub fn for_source(store: &Store, http: &HttpClient, cfg: &SourceConfig) -> Option<Self> {
        let write_back = crate::sources::write_back(cfg)?;
        Some(Self {
            store: store.clone(),
            http: http.for_source(&cfg.key()).single_attempt(),
            key: cfg.key(),
            write_back,
        })
    }

    pub fn key(&self) -> &SourceKey {
        &self.key
    }

    /// Sends the reports due now, one pass; stops between two reports when
    /// `stop` fires (the one in flight is finished). Returns how many were sent.
    async fn send_due(&self, stop: &CancellationToken) -> Result<Pass, StoreError> {
        let mut pass = Pass::default();
        let mut any = false;
        let mut left = BATCH;
        'pass: while left > 0 && !stop.is_cancelled() {
            // Anything due at all? (The reader, not the writer, and no
            // turn of the host's rate spent by an idle pass.)
            if !self.store.reports_due(&self.key, now_us()).await? {
                break;
            }
            // A few at a time: one claim write for several sends, each
            // send well within the claim's time.
            let claim_until = now_us().saturating_add(CLAIM.as_micros() as i64);
            let claimed = self
                .store
                .claim_reports(&self.key, now_us(), claim_until, CLAIM_BATCH.min(left))
                .await?;
            if claimed.is_empty() {
                break;
            }
            any = true;
            left -= claimed.len() as i64;
            let mut unsent: Vec<i64> = claimed.iter().map(|r| r.id).collect();
            for report in claimed {
                let answer = self.attempt(&report, stop).await;
                let answer = match answer {
                    Err(HttpError::Cancelled) => {
                        self.store.release_claims(&unsent).await?;
                        break 'pass;
                    }
                    Err(e @ HttpError::Setup(_)) => {
                        tracing::warn!(error = %e, "cannot send import-state reports");
                        pass.pause = Some(FIRST_BACKOFF);
                        self.store.release_claims(&unsent).await?;
                        break 'pass;
                    }
                    answer => answer,
                };
                unsent.retain(|id| *id != report.id);
                match self.write_back.judge(answer) {
                    Delivery::Sent => {
                        self.store.report_sent(report.id, now_us()).await?;
                        crate::metrics::report_sent(&self.key);
                        pass.sent += 1;
                        tracing::debug!(request = %report.record_id, state = %report.import_state, "import state reported");
                    }
                    Delivery::Retry(error) => {
                        let wait = backoff(report.attempts + 1);
                        tracing::warn!(request = %report.record_id, attempts = report.attempts + 1, retry_in = ?wait, %error, "import-state report failed; will retry");
                        let next = now_us() + wait.as_micros() as i64;
                        self.store.report_retry(report.id, &error, next).await?;
                        crate::metrics::report_failed(&self.key, false);
                        // The endpoint is failing: pause the whole reporter
                        // rather than try the next report right away.
                        pass.pause = Some(wait);
                        self.store.release_claims(&unsent).await?;
                        break 'pass;
                    }
                    Delivery::Refused(error) => {
                        tracing::error!(request = %report.record_id, %error, "import-state report refused by the upstream; not retried");
                        self.store.report_refused(report.id, &error).await?;
                        crate::metrics::report_failed(&self.key, true);
                    }
                }
            }
        }
        if any {
            let pending = self.store.pending_report_count(&self.key).await?;
            crate::metrics::reports_pending(&self.key, pending);
        }
        Ok(pass)
    }

    /// Reports continuously until `stop` fires (the daemon).
    pub async fn run(self, stop: CancellationToken) {
        let span = self.span();
        self.run_loop(stop).instrument(span).await
    }

    /// The span every log line of this reporter is in.
    pub fn span(&self) -> tracing::Span {
        tracing::info_span!("reporter", tenant = %self.key.tenant, source = %self.key.source)
    }

    async fn run_loop(self, stop: CancellationToken) {
        if let Ok(pending) = self.store.pending_report_count(&self.key).await {
            crate::metrics::reports_pending(&self.key, pending);
        }
        // Subscribed before the first pass: a report queued from now on is
        // never missed.
        let mut queued = self.store.outbox_queued(&self.key);
        loop {
            // A failing endpoint is left alone for the whole pause, even if
            // new reports arrive meanwhile.
            // Boxed, like a sync run: an idle reporter task stays small.
            let (wait, wake_on_new) = match Box::pin(self.send_due(&stop)).await {
                Ok(Pass {
                    pause: Some(pause), ..
                }) => (pause, false),
                Ok(p) if p.sent as i64 == BATCH => (Duration::ZERO, true),
                Ok(_) => (self.idle_wait().await, true),
                Err(e) => {
                    tracing::error!(error = %e, "outbox unreadable; retrying");
                    (Duration::from_secs(5), false)
                }
            };
            let new_reports = async {
                if !wake_on_new || queued.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = new_reports => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// How long an idle reporter may sleep: until its next retry is due, at
    /// most [`IDLE_POLL`] (less a random 10 %).
    async fn idle_wait(&self) -> Duration {
        let cap = IDLE_POLL.mul_f64(1.0 - rand::rng().random_range(0.0..0.1));
        match self.store.next_report_due(&self.key).await {
            Ok(Some(due)) => {
                let until = Duration::from_micros(due.saturating_sub(now_us()).max(0) as u64);
                // Never a busy loop, whatever the clock says.
                until.clamp(Duration::from_millis(50), cap)
            }
            Ok(None) => cap,
            Err(_) => Duration::from_secs(5),
        }
    }

    /// Sends what is pending until nothing is left, an attempt fails (the
    /// endpoint is down: no point waiting) or `deadline` passes (`synchro
    /// sync` before it exits). Returns how many remain pending.
    pub async fn drain(
        &self,
        deadline: Duration,
        stop: &CancellationToken,
    ) -> Result<i64, StoreError> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let pass = self.send_due(stop).await?;
            let pending = self.store.pending_report_count(&self.key).await?;
            if pending == 0 || stop.is_cancelled() || pass.pause.is_some() {
                return Ok(pending);
            }
            let next_due = self.store.next_report_due(&self.key).await?.unwrap_or(0);
            let wait = Duration::from_micros(next_due.saturating_sub(now_us()).max(0) as u64);
            let wake = tokio::time::Instant::now() + wait.max(Duration::from_millis(20));
            if wake > until {
                return Ok(pending);
            }
            tokio::time::sleep_until(wake).await;
        }
    }

    /// Sends one claimed report, once, through the shared client (which
    /// waits for the host's budget first, giving way to `stop`).
    async fn attempt(
        &self,
        report: &PendingReport,
        stop: &CancellationToken,
    ) -> Result<crate::http::Response, HttpError> {
        let outgoing = Outgoing {
            record_id: &report.record_id,
            state: &report.import_state,
            message: report.message.as_deref(),
        };
        self.write_back.send(&self.http, outgoing, stop).await
    }
}

/// Delay before attempt `attempts + 1`: exponential, capped at
/// [`MAX_BACKOFF`], with equal jitter (a random delay in `[cap/2, cap]`).
fn backoff(attempts: i64) -> Duration {
    let exp = attempts.clamp(1, 20) as u32 - 1;
    let cap = FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(exp))
        .min(MAX_BACKOFF);
    let ms = cap.as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms.max(1)))
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) <= FIRST_BACKOFF);
        assert!(backoff(4) >= FIRST_BACKOFF * 4);
        assert!(backoff(40) <= MAX_BACKOFF);
    }

    #[tokio::test]
    async fn a_redirect_to_another_host_is_refused_not_retried() {
        // The import endpoint redirects every report to another host.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let target = format!("http://localhost:{}/elsewhere", addr.port());
        let app = axum::Router::new().fallback(move || {
            let target = target.clone();
            async move { (StatusCode::FOUND, [("location", target)]) }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });

        let dir = tempfile::tempdir().expect("tempdir");
        let toml = format!(
            "[storage]\ndatabase = \"sqlite://{}\"\n[[tenants]]\nid = \"t\"\n\
             [[tenants.sources]]\nid = \"c\"\nkind = \"content\"\nschedule = \"every 1m\"\n\
             endpoint = \"http://{addr}/v1\"\ntoken = \"content-token\"\nreport_import_state = true\n",
            dir.path().join("db.sqlite").display()
        );
        let config = match crate::config::load_str(
            &toml,
            &dir.path().join("synchro.toml"),
            &Default::default(),
            &crate::sources::Kinds::builtin(),
        ) {
            Ok(c) => c,
            Err(e) => panic!("{}", e.report()),
        };
        let store = Store::open(&config.storage.database).await.expect("store");
        let http =
            HttpClient::new(&config.http, crate::redact::Redactor::default()).expect("client");
        let cfg = config.sources().next().expect("source");
        let reporter = Reporter::for_source(&store, &http, cfg).expect("reporter");
        let report = PendingReport {
            id: 1,
            record_id: "42".into(),
            completed_at: "2026-01-01T00:00:00Z".into(),
            import_state: "success".into(),
            message: None,
            attempts: 0,
        };
        let answer = reporter.attempt(&report, &CancellationToken::new()).await;
        match reporter.write_back.judge(answer) {
            Delivery::Refused(e) => assert!(
                e.contains(&format!(
                    "to http://localhost:{}: another host",
                    addr.port()
                )),
                "{e}"
            ),
            Delivery::Retry(e) => panic!("retried: {e}"),
            Delivery::Sent => panic!("sent"),
        }
        store.close().await;
    }

    #[tokio::test]
    async fn import_state_reports_are_counted_as_http_requests() {
        // The import endpoint takes every report with 202, a status nothing
        // else in this test answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().route(
            "/v1/content/{id}/import",
            axum::routing::put(|| async { StatusCode::ACCEPTED }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });

        let dir = tempfile::tempdir().expect("tempdir");
        let toml = format!(
            "[storage]\ndatabase = \"sqlite://{}\"\n[[tenants]]\nid = \"t\"\n\
             [[tenants.sources]]\nid = \"c\"\nkind = \"content\"\nschedule = \"every 1m\"\n\
             endpoint = \"http://{addr}/v1\"\ntoken = \"content-token\"\n",
            dir.path().join("db.sqlite").display()
        );
        let config = match crate::config::load_str(
            &toml,
            &dir.path().join("synchro.toml"),
            &Default::default(),
            &crate::sources::Kinds::builtin(),
        ) {
            Ok(c) => c,
            Err(e) => panic!("{}", e.report()),
        };
        let store = Store::open(&config.storage.database).await.expect("store");
        let cfg = config.sources().next().expect("source");
        let key = cfg.key();
        let mut page = crate::model::Page::default();
        page.reports.push(crate::model::Report {
            record_id: "42".into(),
            version_us: None,
            completed_at: "2026-01-01T00:00:00Z".into(),
            outcome: crate::model::ReportOutcome::Success,
        });
        store
            .commit_records(&key, "content", page)
            .await
            .expect("report queued");

        // This test's own recorder: the runtime is the test's one thread.
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        let _local = metrics::set_default_local_recorder(&recorder);
        let http =
            HttpClient::new(&config.http, crate::redact::Redactor::default()).expect("client");
        let reporter = Reporter::for_source(&store, &http, cfg).expect("reporter");
        let pass = reporter
            .send_due(&CancellationToken::new())
            .await
            .expect("pass");
        assert_eq!(pass.sent, 1);
        let text = metrics.render();
        let counted = text
            .lines()
            .find(|l| {
                l.starts_with("synchro_http_requests_total{")
                    && l.contains(&format!("host=\"{addr}\""))
                    && l.contains("status=\"202\"")
                    && l.contains("tenant=\"t\"")
                    && l.contains("source=\"c\"")
            })
            .unwrap_or_else(|| panic!("no import-state request counted:\n{text}"));
        assert!(counted.ends_with(" 1"), "{counted}");
        store.close().await;
    }
}
