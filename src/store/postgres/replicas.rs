//! The daemons using this database and their heartbeats (see the
//! `replicas` migration), on the database clock: replicas on machines
//! whose clocks differ agree on who is alive.

use super::PgStore;
use crate::store::identity::me;
use crate::store::{ReplicaStatus, StoreError};

impl PgStore {
    pub async fn heartbeat(&self, started_us: i64) -> Result<(), StoreError> {
        let me = me();
        sqlx::query(
            "INSERT INTO replicas (id, host, pid, started_at, seen_at) \
             VALUES ($1, $2, $3, $4, synchro_now_us()) \
             ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
        )
        .bind(&me.instance)
        .bind(&me.host)
        .bind(me.pid)
        .bind(started_us)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn leave(&self) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM replicas WHERE id = $1")
            .bind(&me().instance)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn replicas(&self) -> Result<Vec<ReplicaStatus>, StoreError> {
        // The database's clock read in the same statement as the rows.
        let rows: Vec<(String, i64, i64, i64, i64)> =
            sqlx::query_as("SELECT host, pid, started_at, seen_at, synchro_now_us() FROM replicas")
                .fetch_all(&self.pool)
                .await?;
        let now = rows.first().map_or(0, |r| r.4);
        let rows = rows
            .into_iter()
            .map(|(host, pid, started, seen, _)| (host, pid, started, seen))
            .collect();
        Ok(crate::store::types::replica_list(rows, now))
    }
}
