//! The schedule replicas of one Postgres database share: instead of each
//! replica ticking every source and letting the lease turn all but one
//! away (N attempts per tick), each claims a batch of due sources, runs
//! them and moves them to their next tick. SQLite has no replicas: its one
//! daemon keeps its schedule in memory.

use std::time::Duration;

use super::{Backend, Store, StoreError, postgres::PgStore};
use crate::model::SourceKey;

/// The shared schedule of a Postgres store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SharedSchedule(PgStore);

impl Store {
    /// The schedule shared by the daemons of this database, if they share
    /// one (Postgres).
    pub fn shared_schedule(&self) -> Option<SharedSchedule> {
        match &self.backend {
            Backend::Postgres(s) => Some(SharedSchedule(s.clone())),
            Backend::Sqlite(_) => None,
        }
    }
}

impl SharedSchedule {
    /// Adds the configured sources (with their schedule's text): a new one
    /// is due at once, a known one keeps its due instant unless its
    /// schedule changed (then it is due at once). Returns how many rows
    /// were added or changed.
    pub async fn register(&self, sources: &[(SourceKey, String)]) -> Result<u64, StoreError> {
        self.0.register_schedule(sources).await
    }

    /// Claims up to `limit` due sources no live claim holds, oldest due
    /// first, for `ttl`: each with the instant it was due (µs).
    pub async fn claim(
        &self,
        limit: i64,
        ttl: Duration,
    ) -> Result<Vec<(SourceKey, i64)>, StoreError> {
        self.0.claim_schedule(limit, ttl).await
    }

    /// A claimed tick is over: `key` is next due at `next_due_us`, and our
    /// claim is freed.
    pub async fn done(&self, key: &SourceKey, next_due_us: i64) -> Result<(), StoreError> {
        self.0.schedule_done(key, next_due_us).await
    }

    /// Gives back claims we will not run, due again at `due_us` (or when
    /// they were due).
    pub async fn give_back(
        &self,
        keys: &[SourceKey],
        due_us: Option<i64>,
    ) -> Result<(), StoreError> {
        self.0.give_back_schedule(keys, due_us).await
    }

    /// Gives back every claim of this daemon (it stops): the other
    /// replicas run those ticks now instead of after the claims lapse.
    pub async fn release_all(&self) -> Result<u64, StoreError> {
        self.0.release_schedule_claims().await
    }
}
