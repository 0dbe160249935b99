//! The daemons using this database and their heartbeats (see the
//! `replicas` migration). Instants are this machine's clock: every process
//! of a SQLite database runs on it.

use super::{SqliteStore, StoreError, now_us};
use crate::store::ReplicaStatus;
use crate::store::identity::me;

impl SqliteStore {
    pub async fn heartbeat(&self, started_us: i64) -> Result<(), StoreError> {
        let me = me();
        sqlx::query(
            "INSERT INTO replicas (id, host, pid, started_at, seen_at) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
        )
        .bind(&me.instance)
        .bind(&me.host)
        .bind(me.pid)
        .bind(started_us)
        .bind(now_us())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn leave(&self) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM replicas WHERE id = ?1")
            .bind(&me().instance)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn replicas(&self) -> Result<Vec<ReplicaStatus>, StoreError> {
        let rows: Vec<(String, i64, i64, i64)> =
            sqlx::query_as("SELECT host, pid, started_at, seen_at FROM replicas")
                .fetch_all(&self.reader)
                .await?;
        Ok(crate::store::types::replica_list(rows, now_us()))
    }
}
