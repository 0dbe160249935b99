//! Whether a database's schema is the one this binary knows, for commands
//! that read without migrating: reading an older schema would fail on a
//! missing column (or worse, misread), a newer one may have moved data
//! elsewhere. The same rule for every backend.

use sqlx::migrate::Migrator;

use super::StoreError;

/// Compares the migration versions recorded in the database at `location`
/// with the ones `migrator` embeds.
pub(crate) fn check_applied(
    applied: &[i64],
    migrator: &Migrator,
    location: &str,
) -> Result<(), StoreError> {
    let schema_error = |reason: String| StoreError::Schema {
        path: location.to_string(),
        reason,
    };
    let known: Vec<(i64, &str)> = migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| (m.version, m.description.as_ref()))
        .collect();
    if let Some(newer) = applied.iter().find(|v| !known.iter().any(|(k, _)| k == *v)) {
        return Err(schema_error(format!(
            "it was migrated by a newer synchro (migration {newer} is unknown to this binary): \
             use that version, or restore a backup made for this one"
        )));
    }
    let missing: Vec<&(i64, &str)> = known.iter().filter(|(k, _)| !applied.contains(k)).collect();
    if let Some((version, description)) = missing.first() {
        return Err(schema_error(format!(
            "its schema is older than this synchro: {} migration(s) not applied yet, the first \
             {version} ({description}); this command never migrates: `synchro check`, `sync` or \
             `run` with this binary migrates it",
            missing.len()
        )));
    }
    Ok(())
}

/// What a database without synchro's tables is told.
pub(crate) const NOT_MIGRATED: &str = "it has no synchro tables: not a synchro database, or one \
     that was never migrated (`synchro check` creates and migrates it)";
