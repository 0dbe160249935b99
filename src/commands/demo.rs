//! `synchro demo`: the whole daemon against the built-in simulated
//! upstreams, offline, with a ready config in a temporary folder. It shows a
//! full sync, then changes made upstream arriving through an incremental one.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use synchro_simulator::{
    DEFAULT_CALENDAR_TOKEN, DEFAULT_CONTENT_TOKEN, DEFAULT_DS_TOKEN, Simulator,
};
use tokio_util::sync::CancellationToken;

use super::CliError;
use super::assemble::Parts;
use crate::config::Config;
use crate::model::SourceKey;
use crate::store::Store;

/// (tenant, source, démarche, dossiers) of the demo data set.
const SOURCES: [(&str, &str, i64, usize); 2] = [
    ("acme", "permits", 1234, 1_200),
    ("globex", "grants", 5678, 300),
];

/// (tenant, source, calendar id, events) of the demo calendar.
const CALENDAR: (&str, &str, &str, usize) = ("acme", "agenda", "team@acme.example", 800);

/// (tenant, source, requests, batch size) of the demo Contentor account.
const CONTENT: (&str, &str, usize, usize) = ("globex", "translations", 600, 25);

/// Longest wait for a sync to come round.
const WAIT: Duration = Duration::from_secs(60);

pub async fn demo(linger: Duration) -> Result<ExitCode, CliError> {
    let dir = tempfile::tempdir().context("temporary folder")?;
    let sim = Simulator::start(([127, 0, 0, 1], 0).into())
        .await
        .context("starting the simulator")?;
    for (_, _, demarche, n) in SOURCES {
        sim.ds().seed(demarche, n);
    }
    sim.calendar().seed(CALENDAR.2, CALENDAR.3);
    sim.content().seed(CONTENT.2, CONTENT.3);
    let config_path = dir.path().join("synchro.toml");
    std::fs::write(&config_path, demo_config(&sim, dir.path()))
        .context("writing the demo config")?;
    let config = super::load_config(&config_path)?;
    println!(
        "synchro demo — simulated Démarches Simplifiées at {}",
        sim.ds_endpoint()
    );
    println!("config:   {}", config_path.display());

    let store = super::open_store(&config).await?;
    let parts = Parts::new(&config, store.clone(), Default::default())?;
    let stop = CancellationToken::new();
    let scheduler = parts.schedule(&config, stop.clone()).await?;

    println!("\n1. first sync (full listing of every source)...");
    let first = wait_for_success(&store, &config, 1).await?;
    print_status(&store, &config).await?;

    println!(
        "\n2. changes upstream: per démarche 25 dossiers edited, 10 created, 4 hidden, 2 purged;"
    );
    println!("   in the calendar 40 events edited, 12 created, 6 cancelled;");
    println!("   in Contentor 30 requests completed (one batch), 10 back to confirmed...");
    for (_, _, demarche, _) in SOURCES {
        mutate(&sim, demarche);
    }
    mutate_calendar(&sim);
    mutate_content(&sim);
    for s in config.sources() {
        scheduler.trigger(&s.key());
    }
    wait_for_success(&store, &config, first + 1).await?;
    let content_key = SourceKey::new(CONTENT.0, CONTENT.1);
    wait_for_reports(&store, &content_key).await?;
    print_status(&store, &config).await?;

    println!("\n3. the local copy against the simulator:");
    for (tenant, source, demarche, _) in SOURCES {
        let ds = sim.ds();
        compare(
            &store,
            SourceKey::new(tenant, source),
            "demarches",
            ds.live_numbers(demarche).len(),
            ds.deleted_numbers(demarche).len(),
        )
        .await?;
    }
    let cal = sim.calendar();
    compare(
        &store,
        SourceKey::new(CALENDAR.0, CALENDAR.1),
        "calendar",
        cal.live_events(CALENDAR.2).len(),
        cal.cancelled_ids(CALENDAR.2).len(),
    )
    .await?;
    let content = sim.content();
    compare(
        &store,
        content_key.clone(),
        "content",
        content.api_requests().len(),
        0,
    )
    .await?;
    let reports = content.reports();
    let successes = reports
        .iter()
        .filter(|r| r.import_state == "success")
        .count();
    let completed = content
        .api_requests()
        .iter()
        .filter(|r| r["state"] == "completed")
        .count();
    println!(
        "   {content_key}: {successes} import-state report(s) `success` received by Contentor \
         ({completed} requests completed now; requests completed and later reopened were reported too)"
    );
    let mut sample = Vec::new();
    store
        .export(&[SourceKey::new("acme", "permits")], false, |row| {
            if sample.is_empty() {
                sample.push(serde_json::to_string(&row).unwrap_or_default());
            }
            Ok(())
        })
        .await?;
    if let Some(line) = sample.first() {
        let shown: String = line.chars().take(400).collect();
        println!("\n   one export line (`synchro export`), cut at 400 chars:\n   {shown}…");
    }

    tokio::time::sleep(linger).await;
    println!(
        "\n4. shutting down (as on SIGTERM): syncs finish their page, the database is closed."
    );
    scheduler.shutdown(config.scheduler.shutdown_timeout).await;
    store.close().await;
    sim.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

fn demo_config(sim: &Simulator, dir: &std::path::Path) -> String {
    let mut out = format!(
        "[storage]\ndatabase = \"sqlite://{}\"\n\n[scheduler]\nmax_concurrent_syncs = 4\njitter = \"0s\"\n\n\
         [http]\ntimeout = \"10s\"\nmax_retries = 3\n\
         # The simulated upstreams are local: a generous budget for the one host.\n\
         per_host_requests_per_second = 500\nper_host_concurrency = 16\n",
        dir.join("synchro.db").display()
    );
    let mut tenants: Vec<&str> = SOURCES.iter().map(|s| s.0).collect();
    tenants.dedup();
    for tenant in tenants {
        out.push_str(&format!("\n[[tenants]]\nid = \"{tenant}\"\n"));
        for (_, source, demarche, _) in SOURCES.iter().filter(|s| s.0 == tenant) {
            out.push_str(&format!(
                "\n[[tenants.sources]]\nid = \"{source}\"\nkind = \"demarches\"\nschedule = \"every 1h\"\n\
                 endpoint = \"{}\"\ntoken = \"{DEFAULT_DS_TOKEN}\"\ndemarche = {demarche}\npage_size = 100\n",
                sim.ds_endpoint()
            ));
        }
        let (content_tenant, source, _, _) = CONTENT;
        if content_tenant == tenant {
            out.push_str(&format!(
                "\n[[tenants.sources]]\nid = \"{source}\"\nkind = \"content\"\nschedule = \"every 1h\"\n\
                 endpoint = \"{}\"\ntoken = \"{DEFAULT_CONTENT_TOKEN}\"\nreport_import_state = true\n",
                sim.content_endpoint()
            ));
        }
        let (cal_tenant, source, calendar, _) = CALENDAR;
        if cal_tenant == tenant {
            out.push_str(&format!(
                "\n[[tenants.sources]]\nid = \"{source}\"\nkind = \"calendar\"\nschedule = \"every 1h\"\n\
                 endpoint = \"{}\"\ncalendar_id = \"{calendar}\"\naccess_token = \"{DEFAULT_CALENDAR_TOKEN}\"\n\
                 max_results = 250\n",
                sim.calendar_endpoint()
            ));
        }
    }
    out
}

/// Prints one source's counts next to the simulator's, with ✓ or ✗.
async fn compare(
    store: &Store,
    key: SourceKey,
    kind: &str,
    upstream_live: usize,
    upstream_deleted: usize,
) -> Result<(), CliError> {
    let st = store.source_status(&key, kind).await?;
    let ok =
        st.records as usize == upstream_live && st.deleted_records as usize == upstream_deleted;
    println!(
        "   {key}: {} live records (upstream {upstream_live}), {} tombstones (upstream {upstream_deleted} deleted) {}",
        st.records,
        st.deleted_records,
        if ok { "✓" } else { "✗" }
    );
    Ok(())
}

fn mutate_content(sim: &Simulator) {
    let content = sim.content();
    let open: Vec<i64> = content
        .api_requests()
        .iter()
        .filter(|r| r["state"] != "completed")
        .filter_map(|r| r["id"].as_i64())
        .collect();
    let done: Vec<i64> = content
        .api_requests()
        .iter()
        .filter(|r| r["state"] == "completed")
        .filter_map(|r| r["id"].as_i64())
        .collect();
    let batch: Vec<i64> = open.iter().take(30).copied().collect();
    content.set_state_batch(&batch, "completed");
    for id in done.iter().take(10) {
        content.set_state(*id, "confirmed");
    }
}

/// Waits until the reporter has sent every pending import-state report.
async fn wait_for_reports(store: &Store, key: &SourceKey) -> Result<(), CliError> {
    let deadline = Instant::now() + WAIT;
    loop {
        let pending = store.pending_report_count(key).await?;
        if pending == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(anyhow::anyhow!(
                "{pending} import-state reports still pending after {WAIT:?}"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn mutate_calendar(sim: &Simulator) {
    let cal = sim.calendar();
    let (_, _, id, _) = CALENDAR;
    let live: Vec<String> = cal
        .live_events(id)
        .iter()
        .filter_map(|e| e["id"].as_str().map(str::to_string))
        .collect();
    for e in live.iter().step_by(live.len().max(40) / 40).take(40) {
        cal.update(id, e);
    }
    for _ in 0..12 {
        cal.create(id);
    }
    for e in live.iter().rev().take(6) {
        cal.cancel(id, e);
    }
}

fn mutate(sim: &Simulator, demarche: i64) {
    let ds = sim.ds();
    let live = ds.live_numbers(demarche);
    for n in live.iter().step_by(live.len().max(25) / 25).take(25) {
        ds.update(*n);
    }
    for _ in 0..10 {
        ds.create(demarche);
    }
    for n in live.iter().rev().take(4) {
        ds.hide(*n);
    }
    for n in live.iter().skip(1).take(2) {
        ds.purge(*n, None);
    }
}

/// Waits until every demo source has at least `runs` successful runs.
async fn wait_for_success(store: &Store, config: &Config, runs: usize) -> Result<usize, CliError> {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut least = usize::MAX;
        for s in config.sources() {
            let n = store.successful_runs(&s.key()).await?;
            least = least.min(n);
        }
        if least >= runs {
            return Ok(least);
        }
        if Instant::now() > deadline {
            return Err(anyhow::anyhow!(
                "the demo sync did not complete within {WAIT:?}: see the logs above"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn print_status(store: &Store, config: &Config) -> Result<(), CliError> {
    let mut rows = Vec::new();
    for s in config.sources() {
        rows.push(store.source_status(&s.key(), s.kind_name()).await?);
    }
    for line in super::status::table(&rows).lines() {
        println!("   {line}");
    }
    Ok(())
}
