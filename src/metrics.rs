//! Prometheus metrics, labelled by tenant and source. The recorder is only
//! installed by the daemon (`synchro run`); elsewhere every call is a no-op,
//! so the code that records never needs to know whether anyone listens.

use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::model::SourceKey;
use crate::model::{RunOutcome, RunRecord};

/// Run durations worth telling apart: sub-second no-change runs to
/// hour-long full listings.
const DURATION_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];

/// Why the recorder could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] metrics_exporter_prometheus::BuildError);

/// Installs the global recorder and keeps its histograms trimmed; the
/// handle renders `/metrics`.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("synchro_sync_duration_seconds".into()),
            &DURATION_BUCKETS,
        )?
        .install_recorder()?;
    describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Gives every metric its `# HELP` line (and unit), so that `/metrics` is
/// self-explaining to whoever reads it without the README. Called once, by
/// [`install`]; the recorder keeps the descriptions of series not yet seen.
fn describe() {
    describe_counter!(
        "synchro_runs_total",
        "Sync runs finished, by kind and outcome (success, failed, cancelled)."
    );
    describe_counter!(
        "synchro_schedule_claims_total",
        "Claim queries on the schedule shared by replicas (Postgres)."
    );
    describe_counter!(
        "synchro_schedule_ticks_claimed_total",
        "Due sources this replica claimed from the shared schedule."
    );
    describe_counter!(
        "synchro_schedule_claim_microseconds_total",
        Unit::Microseconds,
        "Time spent in claim queries on the shared schedule, in microseconds."
    );
    describe_counter!(
        "synchro_runs_skipped_total",
        "Scheduled runs not started because another process's run held the source's lease."
    );
    describe_counter!(
        "synchro_run_panics_total",
        "Runs whose code panicked (a bug): the run failed, the source kept its schedule."
    );
    describe_counter!("synchro_pages_total", "Pages committed.");
    describe_counter!(
        "synchro_records_upserted_total",
        "Records inserted or replaced by a newer version."
    );
    describe_counter!(
        "synchro_records_deleted_total",
        "Tombstones written, plus records removed by a clear-and-resync."
    );
    describe_histogram!(
        "synchro_sync_duration_seconds",
        Unit::Seconds,
        "Duration of sync runs, by kind."
    );
    describe_gauge!(
        "synchro_last_success_timestamp_seconds",
        Unit::Seconds,
        "End of the last successful run (Unix time); alert on its age."
    );
    describe_counter!(
        "synchro_http_requests_total",
        "HTTP attempts to upstreams, retries included, by host and status (code or error)."
    );
    describe_gauge!(
        "synchro_import_reports_pending",
        "Import-state reports waiting in the outbox."
    );
    describe_counter!(
        "synchro_import_reports_sent_total",
        "Import-state reports the upstream accepted."
    );
    describe_counter!(
        "synchro_import_report_failures_total",
        "Failed import-state report attempts (permanent=true: refused for good)."
    );
    describe_gauge!(
        "synchro_replicas_live",
        "Daemons (replicas) seen alive on this database at the last heartbeat, this one included."
    );
}

/// One finished run.
pub fn run_finished(
    key: &SourceKey,
    kind: &str,
    outcome: RunOutcome,
    totals: &RunRecord,
    elapsed: Duration,
) {
    let (t, s) = (key.tenant.clone(), key.source.clone());
    counter!("synchro_runs_total", "tenant" => t.clone(), "source" => s.clone(), "kind" => kind.to_string(), "outcome" => outcome.as_str())
        .increment(1);
    counter!("synchro_pages_total", "tenant" => t.clone(), "source" => s.clone())
        .increment(totals.pages);
    counter!("synchro_records_upserted_total", "tenant" => t.clone(), "source" => s.clone())
        .increment(totals.upserted);
    counter!("synchro_records_deleted_total", "tenant" => t.clone(), "source" => s.clone())
        .increment(totals.deleted);
    histogram!("synchro_sync_duration_seconds", "tenant" => t.clone(), "source" => s.clone(), "kind" => kind.to_string())
        .record(elapsed.as_secs_f64());
    if outcome == RunOutcome::Success {
        gauge!("synchro_last_success_timestamp_seconds", "tenant" => t, "source" => s)
            .set(crate::time::now_us() as f64 / 1e6);
    }
}

/// One HTTP attempt: `status` is the code, or `error` when none came back.
pub fn http_call(host: &str, labels: Option<&SourceKey>, status: Option<u16>) {
    let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
    let (t, s) = labels.map_or((String::new(), String::new()), |k| {
        (k.tenant.clone(), k.source.clone())
    });
    counter!("synchro_http_requests_total", "host" => host.to_string(), "status" => status, "tenant" => t, "source" => s)
        .increment(1);
}

/// Import-state reports: pending now, sent, and failed attempts.
pub fn reports_pending(key: &SourceKey, pending: i64) {
    gauge!("synchro_import_reports_pending", "tenant" => key.tenant.clone(), "source" => key.source.clone())
        .set(pending as f64);
}

pub fn report_sent(key: &SourceKey) {
    counter!("synchro_import_reports_sent_total", "tenant" => key.tenant.clone(), "source" => key.source.clone())
        .increment(1);
}

pub fn report_failed(key: &SourceKey, permanent: bool) {
    counter!("synchro_import_report_failures_total", "tenant" => key.tenant.clone(), "source" => key.source.clone(), "permanent" => if permanent { "true" } else { "false" })
        .increment(1);
}

/// A scheduled run not started because another process's run held the
/// source (a manual `synchro sync`, a replica): not a failure.
pub fn run_skipped(key: &SourceKey) {
    counter!("synchro_runs_skipped_total", "tenant" => key.tenant.clone(), "source" => key.source.clone(), "reason" => "lease_held")
        .increment(1);
}

/// A run whose code panicked (a bug, on what an upstream sent): the run
/// failed and the source kept its schedule.
pub fn run_panicked(key: &SourceKey) {
    counter!("synchro_run_panics_total", "tenant" => key.tenant.clone(), "source" => key.source.clone())
        .increment(1);
}

/// How many daemons the last heartbeat saw alive on the database: each
/// replica reports the cluster's size (alert when it drops).
pub fn replicas_live(n: usize) {
    gauge!("synchro_replicas_live").set(n as f64);
}

/// One claim query on the shared schedule (replicas on Postgres) took
/// `took` and claimed `ticks` due sources: the claims' cost per run is
/// `claim_microseconds / ticks_claimed`.
pub fn schedule_claimed(ticks: usize, took: Duration) {
    counter!("synchro_schedule_claims_total").increment(1);
    counter!("synchro_schedule_ticks_claimed_total").increment(ticks as u64);
    counter!("synchro_schedule_claim_microseconds_total").increment(took.as_micros() as u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric name this module records.
    const NAMES: [&str; 16] = [
        "synchro_runs_total",
        "synchro_run_panics_total",
        "synchro_runs_skipped_total",
        "synchro_pages_total",
        "synchro_records_upserted_total",
        "synchro_records_deleted_total",
        "synchro_sync_duration_seconds",
        "synchro_last_success_timestamp_seconds",
        "synchro_http_requests_total",
        "synchro_import_reports_pending",
        "synchro_import_reports_sent_total",
        "synchro_import_report_failures_total",
        "synchro_replicas_live",
        "synchro_schedule_claims_total",
        "synchro_schedule_ticks_claimed_total",
        "synchro_schedule_claim_microseconds_total",
    ];

    #[test]
    fn every_metric_has_a_help_line() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            let key = SourceKey::new("acme", "permits");
            run_finished(
                &key,
                "demarches",
                RunOutcome::Success,
                &RunRecord::default(),
                Duration::from_millis(5),
            );
            http_call("example.org", Some(&key), Some(200));
            reports_pending(&key, 1);
            report_sent(&key);
            report_failed(&key, false);
            run_skipped(&key);
            run_panicked(&key);
            replicas_live(3);
            schedule_claimed(4, Duration::from_millis(2));
        });
        let text = handle.render();
        for name in NAMES {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
            assert!(
                text.contains(&format!("\n{name}")),
                "{name} recorded:\n{text}"
            );
        }
    }
}
