//! Group commit of run bookkeeping. A no-change run writes three small
//! things on the one writer connection: its start, the progress of its only
//! page, its end. Each is a round trip to sqlx's SQLite worker thread, and
//! when thousands of runs are due in the same second (sources sharing a
//! cron expression) those round trips are what bounds how fast they drain
//! (BENCHMARKS.md, the herd). The journal task takes every entry waiting
//! when it is free and writes them in one transaction, with multi-row
//! statements; a caller still returns only once its own entry is committed.
//! An entry alone is written as one autocommit query, as without a journal.

use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use super::StoreError;

use crate::store::INTERRUPTED;

/// Entries written by one transaction at most.
const MAX_BATCH: usize = 512;

/// Rows per multi-row statement at most (powers of two below it too, so
/// that few statement texts exist and all stay prepared).
const MAX_ROWS: usize = 64;

/// One bookkeeping write.
pub(super) enum Entry {
    /// A run starts; runs of its source still open are closed as
    /// interrupted.
    Start {
        tenant: String,
        source: String,
        kind: String,
        run_id: String,
        at: i64,
        scheduled_at: Option<i64>,
    },
    /// The progress after a page that changed nothing else.
    Progress {
        tenant: String,
        source: String,
        kind: String,
        phase: &'static str,
        state: String,
        at: i64,
        /// The run's lease (epoch, run id): the progress is written only
        /// while the lease is still the run's (see `lease.rs`). `None`
        /// inside a transaction that checked the fence already.
        fence: Option<(i64, String)>,
    },
    /// A run ended; its lease is freed in the same statement.
    Finish {
        tenant: String,
        source: String,
        run_id: String,
        outcome: &'static str,
        at: i64,
        error: Option<String>,
        pages: i64,
        upserted: i64,
        deleted: i64,
    },
}

type Job = (Entry, oneshot::Sender<Result<(), StoreError>>);

/// Handle to the journal task of one store.
#[derive(Clone, Debug)]
pub(super) struct Journal {
    jobs: mpsc::UnboundedSender<Job>,
    /// Entries committed by a transaction of several (tests).
    #[cfg_attr(not(test), allow(dead_code))]
    batched: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Journal {
    /// Starts the journal task on the current runtime; it ends when every
    /// handle is dropped. (Unbounded: each run waits for its own entry, so
    /// the queue never holds more than one entry per running sync.)
    pub(super) fn start(writer: SqlitePool) -> Self {
        let (jobs, rx) = mpsc::unbounded_channel();
        let batched = std::sync::Arc::default();
        tokio::spawn(serve(writer, rx, std::sync::Arc::clone(&batched)));
        Self { jobs, batched }
    }

    /// Entries committed together with others so far.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) fn batched(&self) -> u64 {
        self.batched.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes `entry` and returns once it is committed.
    pub(super) async fn write(&self, entry: Entry) -> Result<(), StoreError> {
        let (done, committed) = oneshot::channel();
        self.jobs
            .send((entry, done))
            .map_err(|_| StoreError::Closed)?;
        committed.await.map_err(|_| StoreError::Closed)?
    }
}

async fn serve(
    writer: SqlitePool,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    batched: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let mut batch: Vec<Job> = Vec::new();
    while let Some(first) = jobs.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if batch.len() > 1 {
            let entries: Vec<&Entry> = batch.iter().map(|(e, _)| e).collect();
            match write_batch(&writer, &entries).await {
                Ok(()) => {
                    batched.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    for (_, done) in batch.drain(..) {
                        let _ = done.send(Ok(()));
                    }
                    continue;
                }
                // Each entry alone then, so that each caller gets its own
                // error (a locked or full database fails them all anyway),
                // on a fresh connection if the database itself failed: the
                // failed transaction may still count as open on this one.
                Err(e) => {
                    tracing::debug!(error = %e, entries = batch.len(),
                        "batched run bookkeeping failed; writing the entries one by one");
                    if e.is_database_failure() {
                        super::reset_writer(&writer).await;
                    }
                }
            }
        }
        for (entry, done) in batch.drain(..) {
            let _ = done.send(write_one(&writer, &entry).await);
        }
    }
}

/// One entry, one autocommit query.
async fn write_one(writer: &SqlitePool, entry: &Entry) -> Result<(), StoreError> {
    match entry {
        Entry::Start { .. } => {
            bind_starts(
                sqlx::query(sqlx::AssertSqlSafe(start_sql(1))),
                std::slice::from_ref(&entry),
            )
            .execute(writer)
            .await?;
        }
        Entry::Progress {
            fence: Some((epoch, _)),
            tenant,
            source,
            ..
        } => {
            let q = bind_progress(
                sqlx::query(sqlx::AssertSqlSafe(fenced_progress_sql(1))),
                entry,
                true,
            );
            if q.execute(writer).await?.rows_affected() != 1 {
                return Err(StoreError::LeaseLost {
                    key: crate::model::SourceKey::new(tenant, source),
                    epoch: *epoch,
                });
            }
        }
        Entry::Progress { .. } => {
            progress_query(entry).execute(writer).await?;
        }
        Entry::Finish { .. } => {
            bind_finishes(
                sqlx::query(sqlx::AssertSqlSafe(finish_sql(1))),
                std::slice::from_ref(&entry),
            )
            .execute(writer)
            .await?;
        }
    }
    Ok(())
}

/// Every entry in one `BEGIN IMMEDIATE` transaction: starts, then
/// progress, then ends (a run's entries are never in the same batch: each
/// waits for the one before).
async fn write_batch(writer: &SqlitePool, entries: &[&Entry]) -> Result<(), StoreError> {
    let starts: Vec<&Entry> = entries
        .iter()
        .copied()
        .filter(|e| matches!(e, Entry::Start { .. }))
        .collect();
    let progress: Vec<&Entry> = entries
        .iter()
        .copied()
        .filter(|e| matches!(e, Entry::Progress { fence: None, .. }))
        .collect();
    let fenced: Vec<&Entry> = entries
        .iter()
        .copied()
        .filter(|e| matches!(e, Entry::Progress { fence: Some(_), .. }))
        .collect();
    let finishes: Vec<&Entry> = entries
        .iter()
        .copied()
        .filter(|e| matches!(e, Entry::Finish { .. }))
        .collect();
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
    for chunk in chunks(&starts) {
        bind_starts(
            sqlx::query(sqlx::AssertSqlSafe(start_sql(chunk.len()))),
            chunk,
        )
        .execute(&mut *tx)
        .await?;
    }
    for chunk in chunks(&progress) {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(progress_sql(chunk.len())));
        for e in chunk {
            q = bind_progress(q, e, false);
        }
        q.execute(&mut *tx).await?;
    }
    for chunk in chunks(&fenced) {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(fenced_progress_sql(chunk.len())));
        for e in chunk {
            q = bind_progress(q, e, true);
        }
        // A run whose lease moved: the whole batch rolls back and every
        // entry is written alone, so that only that run gets the error.
        if q.execute(&mut *tx).await?.rows_affected() != chunk.len() as u64 {
            return Err(StoreError::Corrupt(
                "a fenced progress entry of the batch lost its lease".into(),
            ));
        }
    }
    for chunk in chunks(&finishes) {
        bind_finishes(
            sqlx::query(sqlx::AssertSqlSafe(finish_sql(chunk.len()))),
            chunk,
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;

/// The starts of `n` runs: close the runs of their sources a killed process
/// left open, then open theirs. Two statements, one query (one round trip:
/// anonymous parameters bind in order across them).
fn start_sql(n: usize) -> String {
    format!(
        "UPDATE runs SET outcome = 'failed', finished_at = ?, error = '{INTERRUPTED}' \
         WHERE outcome = 'running' AND (tenant, source) IN (VALUES {}); \
         INSERT INTO runs (run_id, tenant, source, kind, started_at, outcome, scheduled_at) \
         VALUES {}",
        rows(n, "(?, ?)"),
        rows(n, "(?, ?, ?, ?, ?, 'running', ?)")
    )
}

fn bind_starts<'q>(mut q: Query<'q>, starts: &[&'q Entry]) -> Query<'q> {
    let at = starts.iter().find_map(|e| match e {
        Entry::Start { at, .. } => Some(*at),
        _ => None,
    });
    q = q.bind(at);
    for e in starts {
        if let Entry::Start { tenant, source, .. } = e {
            q = q.bind(tenant).bind(source);
        }
    }
    for e in starts {
        if let Entry::Start {
            tenant,
            source,
            kind,
            run_id,
            at,
            scheduled_at,
        } = e
        {
            q = q
                .bind(run_id)
                .bind(tenant)
                .bind(source)
                .bind(kind)
                .bind(at)
                .bind(scheduled_at);
        }
    }
    q
}

/// The progress upsert of one `Entry::Progress`, ready to run inside a
/// page's transaction, which checked the run's fence already.
pub(super) fn progress_query(entry: &Entry) -> Query<'_> {
    bind_progress(
        sqlx::query(sqlx::AssertSqlSafe(progress_sql(1))),
        entry,
        false,
    )
}

fn progress_sql(n: usize) -> String {
    format!(
        "INSERT INTO progress (tenant, source, kind, phase, state, updated_at) VALUES {} \
         ON CONFLICT (tenant, source) DO UPDATE SET \
         kind = excluded.kind, phase = excluded.phase, state = excluded.state, \
         updated_at = excluded.updated_at",
        rows(n, "(?, ?, ?, ?, ?, ?)")
    )
}

/// The progress of `n` runs, each written only while its run still holds
/// the lease at the epoch it took (the fence, in the same statement).
fn fenced_progress_sql(n: usize) -> String {
    format!(
        "INSERT INTO progress (tenant, source, kind, phase, state, updated_at) \
         SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6 \
         FROM (VALUES {}) AS v \
         WHERE EXISTS (SELECT 1 FROM leases l WHERE l.tenant = v.column1 \
             AND l.source = v.column2 AND l.epoch = v.column7 AND l.run_id = v.column8) \
         ON CONFLICT (tenant, source) DO UPDATE SET \
         kind = excluded.kind, phase = excluded.phase, state = excluded.state, \
         updated_at = excluded.updated_at",
        rows(n, "(?, ?, ?, ?, ?, ?, ?, ?)")
    )
}

/// Binds a progress entry: its six columns, then, `with_fence`, its fence
/// (for [`fenced_progress_sql`]).
fn bind_progress<'q>(q: Query<'q>, e: &'q Entry, with_fence: bool) -> Query<'q> {
    match e {
        Entry::Progress {
            tenant,
            source,
            kind,
            phase,
            state,
            at,
            fence,
        } => {
            let q = q
                .bind(tenant)
                .bind(source)
                .bind(kind)
                .bind(*phase)
                .bind(state)
                .bind(at);
            match fence {
                Some((epoch, run_id)) if with_fence => q.bind(epoch).bind(run_id),
                _ => q,
            }
        }
        _ => q,
    }
}

/// The ends of `n` runs, then the release of their leases (only where the
/// lease still names the run: a lease taken over stays with its taker).
fn finish_sql(n: usize) -> String {
    format!(
        "UPDATE runs SET outcome = v.column2, finished_at = v.column3, error = v.column4, \
         pages = v.column5, upserted = v.column6, deleted = v.column7 \
         FROM (VALUES {}) AS v WHERE runs.run_id = v.column1; \
         UPDATE leases SET run_id = NULL, expires_at = 0 \
         FROM (VALUES {}) AS v \
         WHERE leases.tenant = v.column1 AND leases.source = v.column2 \
           AND leases.run_id = v.column3",
        rows(n, "(?, ?, ?, ?, ?, ?, ?)"),
        rows(n, "(?, ?, ?)")
    )
}

fn bind_finishes<'q>(mut q: Query<'q>, finishes: &[&'q Entry]) -> Query<'q> {
    for e in finishes {
        if let Entry::Finish {
            run_id,
            outcome,
            at,
            error,
            pages,
            upserted,
            deleted,
            ..
        } = e
        {
            q = q
                .bind(run_id)
                .bind(*outcome)
                .bind(at)
                .bind(error.as_deref())
                .bind(pages)
                .bind(upserted)
                .bind(deleted);
        }
    }
    for e in finishes {
        if let Entry::Finish {
            tenant,
            source,
            run_id,
            ..
        } = e
        {
            q = q.bind(tenant).bind(source).bind(run_id);
        }
    }
    q
}

/// `n` copies of a row's placeholders, comma-separated.
fn rows(n: usize, row: &str) -> String {
    vec![row; n].join(", ")
}

/// Slices of at most [`MAX_ROWS`], each a power of two long.
fn chunks<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if items.is_empty() {
            return None;
        }
        let mut n = MAX_ROWS;
        while n > items.len() {
            n /= 2;
        }
        let (chunk, rest) = items.split_at(n);
        items = rest;
        Some(chunk)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_of_every_kind_of_entry_is_one_transaction_that_succeeds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            crate::store::Store::open(&format!("sqlite://{}", dir.path().join("j.db").display()))
                .await
                .expect("store");
        let start = |i: usize| Entry::Start {
            tenant: "t".into(),
            source: format!("s{i}"),
            kind: "k".into(),
            run_id: format!("r{i}"),
            at: 10,
            scheduled_at: Some(5),
        };
        // Open runs a killed process left, then a batch: new starts for
        // them (closing them) and for others, progress, ends.
        let dead: Vec<Entry> = (0..3).map(start).collect();
        let dead_refs: Vec<&Entry> = dead.iter().collect();
        write_batch(&store.sqlite().writer, &dead_refs)
            .await
            .expect("batch");
        let mut batch: Vec<Entry> = (3..70).map(start).collect();
        batch.extend((0..3).map(|i| Entry::Start {
            tenant: "t".into(),
            source: format!("s{i}"),
            kind: "k".into(),
            run_id: format!("again{i}"),
            at: 20,
            scheduled_at: None,
        }));
        batch.extend((0..70).map(|i| Entry::Progress {
            tenant: "t".into(),
            source: format!("s{i}"),
            kind: "k".into(),
            phase: "incremental",
            state: format!("{{\"n\":{i}}}"),
            at: 30,
            fence: None,
        }));
        batch.extend((3..70).map(|i| Entry::Finish {
            tenant: "t".into(),
            source: format!("s{i}"),
            run_id: format!("r{i}"),
            outcome: "success",
            at: 40,
            error: None,
            pages: 1,
            upserted: i as i64,
            deleted: 0,
        }));
        let refs: Vec<&Entry> = batch.iter().collect();
        write_batch(&store.sqlite().writer, &refs)
            .await
            .expect("batch");

        let count = |sql: &'static str| {
            let pool = store.sqlite().reader.clone();
            async move {
                let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&pool).await.expect("count");
                n
            }
        };
        assert_eq!(
            count("SELECT count(*) FROM runs WHERE outcome = 'failed' AND error LIKE 'interrupted%' AND finished_at >= 10").await,
            3,
            "the dead runs, closed by the batch's starts"
        );
        assert_eq!(
            count("SELECT count(*) FROM runs WHERE outcome = 'success' AND finished_at = 40 AND upserted = CAST(substr(run_id, 2) AS INTEGER)").await,
            67
        );
        assert_eq!(
            count("SELECT count(*) FROM runs WHERE outcome = 'running' AND run_id LIKE 'again%'")
                .await,
            3
        );
        assert_eq!(
            count("SELECT count(*) FROM progress WHERE phase = 'incremental' AND json_extract(state, '$.n') = CAST(substr(source, 2) AS INTEGER)").await,
            70
        );
    }

    #[test]
    fn chunks_are_powers_of_two_covering_every_item_once() {
        let items: Vec<usize> = (0..203).collect();
        let sizes: Vec<usize> = chunks(&items).map(<[usize]>::len).collect();
        assert_eq!(sizes, [64, 64, 64, 8, 2, 1]);
        let joined: Vec<usize> = chunks(&items).flatten().copied().collect();
        assert_eq!(joined, items);
        assert_eq!(chunks::<usize>(&[]).count(), 0);
    }
}
