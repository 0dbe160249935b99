//! What the baselines copy from synchro's store so that they compare like
//! for like: the upsert rule of every record write, the page cache and WAL
//! checkpoint interval of a large sync, and timestamps as the store keeps
//! them. synchro exports none of this (it is the store's own business); the
//! tests below read synchro's source and fail when a copy drifts from it.

use chrono::{DateTime, SecondsFormat};

/// The conflict clause of synchro's record upserts: a version replaces the
/// stored one only if it is newer by the upstream's clock, or equally new
/// but different.
pub const UPSERT_CONFLICT: &str = r#"
ON CONFLICT (tenant, source, id) DO UPDATE SET
    updated_at = excluded.updated_at,
    updated_us = excluded.updated_us,
    data = excluded.data,
    stored_at = excluded.stored_at,
    seq = excluded.seq,
    deleted = CASE WHEN excluded.updated_us > records.updated_us THEN 0 ELSE records.deleted END,
    listing = coalesce(excluded.listing, records.listing)
WHERE excluded.updated_us > records.updated_us
   OR (excluded.updated_us = records.updated_us AND records.deleted = 0
       AND excluded.data IS NOT records.data)
"#;

/// The writer's page cache while a large sync runs, in KiB.
pub const WIDE_KIB: i64 = 16 * 1024;

/// WAL pages between automatic checkpoints while a large sync runs.
pub const WIDE_CHECKPOINT_PAGES: i64 = 8192;

/// µs since the epoch as the store writes `updated_at`: RFC 3339 UTC, µs.
pub fn format_us(us: i64) -> String {
    DateTime::from_timestamp_micros(us)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// An RFC 3339 timestamp as the store compares versions: µs since the epoch.
pub fn parse_us(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.timestamp_micros())
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    /// Every Rust file of synchro's `src/`, concatenated: where the store
    /// declares what this module copies, wherever in `src/` it lives.
    fn synchro_source() -> String {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            let entries = std::fs::read_dir(dir)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(path);
                }
            }
        }
        let mut files = Vec::new();
        walk(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../src"),
            &mut files,
        );
        files.sort();
        files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap_or_default())
            .collect()
    }

    /// The value of `const NAME: i64 = A * B ...;` as declared in `source`.
    fn declared(source: &str, name: &str) -> Option<i64> {
        let declaration = format!("const {name}: i64 = ");
        let line = source.lines().find(|l| l.contains(&declaration))?;
        let (_, expr) = line.split_once(&declaration)?;
        expr.trim_end_matches(';')
            .split('*')
            .map(|factor| factor.trim().replace('_', "").parse::<i64>().ok())
            .product()
    }

    #[test]
    fn the_baselines_upsert_with_the_stores_rule() {
        let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            words(&synchro_source()).contains(&words(UPSERT_CONFLICT)),
            "synchro's store no longer upserts with baseline::UPSERT_CONFLICT: copy its rule here"
        );
    }

    #[test]
    fn the_ceiling_gets_the_cache_of_a_large_sync() {
        let source = synchro_source();
        assert_eq!(declared(&source, "WIDE_KIB"), Some(WIDE_KIB));
        assert_eq!(
            declared(&source, "WIDE_CHECKPOINT_PAGES"),
            Some(WIDE_CHECKPOINT_PAGES)
        );
    }

    #[test]
    fn timestamps_round_trip() {
        let us = 1_709_288_142_123_456;
        assert_eq!(format_us(us), "2024-03-01T10:15:42.123456Z");
        assert_eq!(parse_us(&format_us(us)), Some(us));
        assert_eq!(parse_us("2024-03-01T11:15:42.123456+01:00"), Some(us));
    }
}
