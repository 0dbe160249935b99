//! The change feed's shared parts: how a commit numbers its changes, what a
//! reader asks for and what it gets back. Each backend reads and writes
//! the counter in its own SQL (see the `change_seq` migrations for why the
//! numbers follow commit order on each).

use std::time::Duration;

use super::{ExportRow, SourceKey, Store, StoreError};

/// Tombstones removed per purge transaction: short, so that the syncs'
/// commits slip in between.
pub(crate) const PURGE_BATCH: i64 = 500;

impl Store {
    /// Deletes the tombstones stored more than `max_age` ago
    /// (`[storage] tombstone_retention`), oldest first, a batch per
    /// transaction; each raises `purged_through` to the highest seq it
    /// removed, so that a reader behind it is told to resync, never left
    /// with a silent gap. Returns how many went.
    pub async fn purge_tombstones(&self, max_age: Duration) -> Result<u64, StoreError> {
        let max_age_us = i64::try_from(max_age.as_micros()).unwrap_or(i64::MAX);
        let cutoff = crate::time::now_us().saturating_sub(max_age_us);
        let mut purged = 0;
        loop {
            let n = self.purge_tombstone_batch(cutoff).await?;
            purged += n;
            if n < PURGE_BATCH as u64 {
                return Ok(purged);
            }
        }
    }
}

/// Hands out the change numbers of one commit: the transaction reads the
/// counter once (on Postgres, locking it until commit), numbers its rows
/// from there, and writes the counter back once if it took any. Numbers a
/// statement reserved for rows it did not change are gaps, never reused.
#[derive(Debug)]
pub(crate) struct SeqAlloc {
    read: i64,
    last: i64,
    purge_cutoff_us: i64,
}

impl SeqAlloc {
    /// Starts after `last_seq`, the counter as the transaction read it,
    /// with the last purge's cutoff read from the same row.
    pub(crate) fn after(last_seq: i64, purge_cutoff_us: i64) -> Self {
        Self {
            read: last_seq,
            last: last_seq,
            purge_cutoff_us,
        }
    }

    /// The `stored_at` before which the last tombstone purge removed
    /// tombstones: deletions dated before it are stored only for records
    /// the store holds (see `batch::keep_held_deletions`).
    pub(crate) fn purge_cutoff_us(&self) -> i64 {
        self.purge_cutoff_us
    }

    /// The next number.
    pub(crate) fn next(&mut self) -> i64 {
        self.last += 1;
        self.last
    }

    /// The last number handed out: the base of a statement that numbers
    /// its rows itself (`base + 1 ..= base + n`), which then [`advance`]s
    /// past them.
    ///
    /// [`advance`]: SeqAlloc::advance
    pub(crate) fn last(&self) -> i64 {
        self.last
    }

    /// Skips the `n` numbers a statement gave its rows.
    pub(crate) fn advance(&mut self, n: u64) {
        self.last = self
            .last
            .saturating_add(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The highest number handed out, to write back, if any was.
    pub(crate) fn taken(&self) -> Option<i64> {
        (self.last != self.read).then_some(self.last)
    }
}

/// Whose changes a reader may see and asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeScope {
    /// Every source (the admin token; the CLI without names).
    All,
    /// One tenant's sources (a tenant's read token).
    Tenant(String),
    /// These sources only.
    Sources(Vec<SourceKey>),
}

impl ChangeScope {
    /// Whether a row of `tenant`/`source` is in scope.
    pub fn contains(&self, tenant: &str, source: &str) -> bool {
        match self {
            ChangeScope::All => true,
            ChangeScope::Tenant(t) => t == tenant,
            ChangeScope::Sources(keys) => keys
                .iter()
                .any(|k| k.tenant == tenant && k.source == source),
        }
    }
}

/// One page of the feed.
#[derive(Debug)]
pub struct Changes {
    /// Changes with `seq > since`, in `seq` order.
    pub rows: Vec<ExportRow>,
    /// Where to continue: the last row's `seq` when the page is full,
    /// otherwise the database's last change when it was read (a reader
    /// whose scope saw nothing still moves on).
    pub next_since: i64,
}

/// Reads the counter as a [`Head`] (the same on every backend).
pub(crate) const READ_HEAD: &str =
    "SELECT last_seq, purged_through, purge_cutoff_us FROM change_seq WHERE id = 1";

/// The counter as a reader's snapshot saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct Head {
    /// The last seq handed out.
    pub last_seq: i64,
    /// The highest seq of a change that left no row (purged, forgotten).
    pub purged_through: i64,
    /// The last tombstone purge's cutoff (see [`SeqAlloc::purge_cutoff_us`]).
    pub purge_cutoff_us: i64,
}

impl Head {
    /// Whether a reader at `since` can go on from there: not when a change
    /// it has not seen left no row behind (a purged tombstone), nor when
    /// its position is beyond this database's last change (a position
    /// from another database, or a restored backup). `0`, "from the
    /// beginning", is always good: it reads every retained row.
    pub(crate) fn check(self, since: i64) -> Result<(), super::StoreError> {
        if since < 0 || (since != 0 && since < self.purged_through) || since > self.last_seq {
            return Err(super::StoreError::ResyncNeeded {
                since,
                purged_through: self.purged_through,
                last_seq: self.last_seq,
            });
        }
        Ok(())
    }

    /// The next position after a page of `rows` read with `limit`.
    pub(crate) fn next_since(self, rows: &[ExportRow], limit: i64) -> i64 {
        match rows.last() {
            Some(last) if i64::try_from(rows.len()).unwrap_or(i64::MAX) >= limit => last.seq,
            _ => self.last_seq,
        }
    }
}

/// Rows per page a reader gets at most, whatever it asks for.
pub const MAX_CHANGES_PER_PAGE: i64 = 10_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_follow_the_counter_and_reservations_leave_gaps_unreused() {
        let mut seq = SeqAlloc::after(41, 0);
        assert_eq!(seq.taken(), None);
        assert_eq!(seq.next(), 42);
        assert_eq!(seq.last(), 42);
        seq.advance(3);
        assert_eq!(seq.next(), 46);
        assert_eq!(seq.taken(), Some(46));
    }

    #[test]
    fn a_position_behind_the_purge_or_beyond_the_head_needs_a_resync() {
        let head = Head {
            last_seq: 100,
            purged_through: 40,
            purge_cutoff_us: 0,
        };
        assert!(head.check(0).is_ok(), "from the beginning");
        assert!(head.check(40).is_ok(), "saw the last purged change");
        assert!(head.check(100).is_ok());
        for bad in [-1, 1, 39, 101] {
            assert!(
                matches!(
                    head.check(bad),
                    Err(crate::store::StoreError::ResyncNeeded { .. })
                ),
                "{bad}"
            );
        }
    }
}
