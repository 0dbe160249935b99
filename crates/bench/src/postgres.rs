//! Ingest into Postgres: a full sync of N Démarches Simplifiées dossiers
//! into a fresh Postgres database, as a ratio to the same-payload Postgres
//! ceiling — the fastest bulk upsert of the very rows the sync stored:
//! `COPY` into a temporary staging table, then one `INSERT … SELECT … ON
//! CONFLICT` with synchro's upsert rule into a fresh synchro database, in
//! one transaction. Syncs and ceiling runs alternate, three each, and the
//! best of each side is compared (noise only slows a run down).
//!
//! The server is `SYNCHRO_BENCH_POSTGRES`, else `SYNCHRO_TEST_POSTGRES`,
//! else the local `postgres://postgres@127.0.0.1/test`; each run creates
//! its own database there and drops it. Without a server the section says
//! it was skipped.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sqlx::{Connection, PgConnection};
use synchro_simulator::Simulator;

use crate::child;
use crate::report::{Section, verdict};

const ATTEMPTS: usize = 3;
const TARGET_RATIO: f64 = 0.60;
/// The highest per-host request rate the configuration accepts.
const MAX_RATE: u32 = 100_000;

/// synchro's upsert rule on Postgres (newer by the upstream's clock, or as
/// new and different; a tombstone revives only with a newer version),
/// written out here: the bench uses only the daemon's public API.
const CEILING_UPSERT: &str = r#"
INSERT INTO records AS r (tenant, source, id, kind, updated_at, updated_us, deleted, data,
                          stored_at, listing, seq)
SELECT 'bench', 'ceiling', s.id, 'demarches', s.updated_at, s.updated_us, s.deleted,
       s.data::json, s.updated_us, NULL, row_number() OVER ()
FROM staging s
ON CONFLICT (tenant, source, id) DO UPDATE SET
    updated_at = excluded.updated_at, updated_us = excluded.updated_us, data = excluded.data,
    stored_at = excluded.stored_at, seq = excluded.seq,
    deleted = CASE WHEN excluded.updated_us > r.updated_us THEN false ELSE r.deleted END,
    listing = coalesce(excluded.listing, r.listing)
WHERE excluded.updated_us > r.updated_us
   OR (excluded.updated_us = r.updated_us AND NOT r.deleted
       AND excluded.data::text IS DISTINCT FROM r.data::text)
"#;

/// The server the section creates its databases on.
pub(crate) fn server() -> String {
    std::env::var("SYNCHRO_BENCH_POSTGRES")
        .or_else(|_| std::env::var("SYNCHRO_TEST_POSTGRES"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1/test".into())
}

/// A database of its own on the server, dropped by [`Scratch::drop_it`].
pub(crate) struct Scratch {
    server: String,
    name: String,
    pub(crate) url: String,
}

impl Scratch {
    pub(crate) async fn create(server: &str) -> Result<Self> {
        let name = format!(
            "synchro_bench_{}_{}",
            std::process::id(),
            chrono::Utc::now().timestamp_micros()
        );
        let mut admin = PgConnection::connect(server).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        let base = server.rsplit_once('/').map_or(server, |(b, _)| b);
        Ok(Self {
            server: server.to_string(),
            url: format!("{base}/{name}"),
            name,
        })
    }

    pub(crate) async fn drop_it(self) -> Result<()> {
        let mut admin = PgConnection::connect(&self.server).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut admin)
        .await?;
        admin.close().await?;
        Ok(())
    }
}

/// One row as the sync stored it: id, updated_at, updated_us, deleted, data.
type Row = (String, String, i64, bool, String);

/// A full sync of `n` dossiers into the fresh database `db`: the run's
/// duration as recorded in `runs`, and the rows in the order stored.
async fn full_sync(
    bin: &Path,
    sim: &Simulator,
    db: &Scratch,
    n: usize,
) -> Result<(Duration, Vec<Row>)> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("synchro.toml");
    let toml = format!(
        "[storage]\ndatabase = \"{}\"\n\n[server]\nlisten = \"127.0.0.1:0\"\n\n\
         [http]\nper_host_requests_per_second = {MAX_RATE}\nper_host_concurrency = 16\n\n\
         [[tenants]]\nid = \"bench\"\n\n[[tenants.sources]]\nid = \"demarches\"\n\
         kind = \"demarches\"\nschedule = \"every 1h\"\nendpoint = \"{}\"\ntoken = \"{}\"\n\
         demarche = 1\npage_size = 100\n",
        db.url,
        sim.ds_endpoint(),
        synchro_simulator::DEFAULT_DS_TOKEN
    );
    std::fs::write(&config, toml)?;
    child::run_to_end(bin, &config, dir.path(), &["sync"]).await?;
    let mut conn = PgConnection::connect(&db.url).await?;
    let (run_us,): (i64,) = sqlx::query_as(
        "SELECT finished_at - started_at FROM runs WHERE outcome = 'success' ORDER BY id LIMIT 1",
    )
    .fetch_one(&mut conn)
    .await
    .context("the sync is not recorded as a success")?;
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, updated_at, updated_us, deleted, data::text FROM records ORDER BY ctid",
    )
    .fetch_all(&mut conn)
    .await?;
    conn.close().await?;
    if rows.len() < n {
        bail!("{} records stored, {n} expected", rows.len());
    }
    Ok((Duration::from_micros(run_us.max(0) as u64), rows))
}

/// `rows` as CSV for `COPY`, every text field quoted.
fn csv(rows: &[Row]) -> Vec<u8> {
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let mut out = String::with_capacity(rows.iter().map(|r| r.4.len() + 64).sum());
    for (id, at, us, deleted, data) in rows {
        let _ = writeln!(
            out,
            "{},{},{us},{},{}",
            quote(id),
            quote(at),
            if *deleted { "t" } else { "f" },
            quote(data)
        );
    }
    out.into_bytes()
}

/// One ceiling run into the fresh database `db` (records/s): the CSV is
/// prepared before the clock starts.
async fn ceiling(db: &Scratch, data: &[u8], n: usize) -> Result<f64> {
    let store = synchro::store::Store::open(&db.url).await?;
    store.close().await;
    let mut conn = PgConnection::connect(&db.url).await?;
    let started = Instant::now();
    let mut tx = conn.begin().await?;
    sqlx::query(
        "CREATE TEMPORARY TABLE staging (id text, updated_at text, updated_us bigint, \
         deleted boolean, data text) ON COMMIT DROP",
    )
    .execute(&mut *tx)
    .await?;
    let mut copy = tx
        .copy_in_raw("COPY staging FROM STDIN (FORMAT csv)")
        .await?;
    for chunk in data.chunks(1 << 20) {
        copy.send(chunk).await?;
    }
    copy.finish().await?;
    let inserted = sqlx::query(CEILING_UPSERT).execute(&mut *tx).await?;
    tx.commit().await?;
    let elapsed = started.elapsed();
    conn.close().await?;
    if inserted.rows_affected() != n as u64 {
        bail!(
            "the ceiling stored {} rows of {n}",
            inserted.rows_affected()
        );
    }
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// The section `title` says it was skipped when no server answers at
/// `server` (`None`: one does).
pub(crate) async fn skipped_without(server: &str, title: &str) -> Option<Section> {
    let e = PgConnection::connect(server).await.err()?;
    eprintln!("{title}: skipped, no server at {server}: {e}");
    Some(Section {
        title: title.to_string(),
        body: format!(
            "Skipped: no Postgres server answered at `{server}` (set `SYNCHRO_BENCH_POSTGRES`).\n"
        ),
        misses: Vec::new(),
    })
}

pub async fn run(bin: &Path, n: usize) -> Result<Section> {
    let title = "Ingest into Postgres".to_string();
    let server = server();
    if let Some(skipped) = skipped_without(&server, &title).await {
        return Ok(skipped);
    }
    let sim = Simulator::start(([127, 0, 0, 1], 0).into()).await?;
    sim.ds().seed(1, n);
    let (mut syncs, mut ceilings) = (Vec::new(), Vec::new());
    for attempt in 0..ATTEMPTS {
        let db = Scratch::create(&server).await?;
        let (run, rows) = full_sync(bin, &sim, &db, n).await?;
        db.drop_it().await?;
        let data = csv(&rows);
        let records = rows.len();
        drop(rows);
        let db = Scratch::create(&server).await?;
        let rate = ceiling(&db, &data, records).await?;
        db.drop_it().await?;
        let sync_rate = records as f64 / run.as_secs_f64().max(1e-9);
        eprintln!(
            "postgres run {}: sync {sync_rate:.0} records/s, ceiling {rate:.0} records/s",
            attempt + 1
        );
        syncs.push(sync_rate);
        ceilings.push(rate);
    }
    sim.shutdown().await;
    let best_sync = syncs.iter().copied().fold(0.0, f64::max);
    let best_ceiling = ceilings.iter().copied().fold(0.0, f64::max);
    let ratio = best_sync / best_ceiling;
    let ok = ratio >= TARGET_RATIO;
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut body = String::new();
    let _ = write!(
        body,
        "`synchro sync` (release binary, child process) of {n} Démarches Simplifiées dossiers \
         from the in-process simulator into a fresh Postgres database on the local server \
         (`[storage] database = \"postgres://...\"`, default pool), against the *same-payload \
         Postgres ceiling*: the very rows the sync stored, in the order it stored them, \
         `COPY`'d into a temporary staging table and moved with one `INSERT … SELECT … ON \
         CONFLICT` (synchro's upsert rule) into a fresh synchro database, in one transaction. \
         {ATTEMPTS} syncs and {ATTEMPTS} ceiling runs alternate; the best of each side is \
         compared. Target: ≥ 60 % of the ceiling.\n\n\
         | Records | Sync runs, records/s | Ceiling runs, records/s | Best sync | Best ceiling | Ratio | Target ≥ 60 % |\n\
         |---:|---|---|---:|---:|---:|---|\n\
         | {n} | {} | {} | {best_sync:.0} | {best_ceiling:.0} | {:.1} % | {} |\n",
        list(&syncs),
        list(&ceilings),
        ratio * 100.0,
        verdict(ok)
    );
    let misses = if ok {
        Vec::new()
    } else {
        vec![format!(
            "Postgres ingest: {:.1} % of the same-payload COPY ceiling (target 60 %)",
            ratio * 100.0
        )]
    };
    Ok(Section {
        title,
        body,
        misses,
    })
}
