//! (Progress is loaded and saved in `records.rs`, inside the page
//! transaction; this module holds what reads progress outside of a run.)

use super::{Store, StoreError};

impl Store {
    /// Sources that have stored progress, for `status` of sources removed
    /// from the config.
    pub async fn sources_with_progress(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT tenant, source, kind FROM progress ORDER BY tenant, source")
                .fetch_all(&self.reader)
                .await?,
        )
    }
}
