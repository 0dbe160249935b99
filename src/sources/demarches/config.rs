//! The `demarches` kind's keys and how a source of it is built.

use std::time::Duration;

use super::Demarches;
use crate::config::{KindKeys, Secret};
use crate::sources::{Build, Kind, Source};

/// Defaults of the kind's keys (DESIGN.md §2).
mod defaults {
    use std::time::Duration;

    pub const ENDPOINT: &str = "https://demarche.numerique.gouv.fr/api/v2/graphql";
    pub(crate) const PAGE_SIZE: u32 = 100;
    pub(crate) const UPDATED_SINCE: &str = "2000-01-01T00:00:00Z";
    pub(crate) const RECONCILE_EVERY: Duration = Duration::from_secs(24 * 3600);
    pub(crate) const DELETED_LOOKBACK: Duration = Duration::from_secs(30 * 24 * 3600);
}

/// A démarche's keys.
#[derive(Debug, Clone, PartialEq)]
pub struct DemarchesConfig {
    pub token: Secret,
    pub demarche: i64,
    /// Dossiers per request; the API silently caps `first` at 100.
    pub page_size: u32,
    /// Fixed `updatedSince` of the first full listing (RFC 3339).
    pub updated_since: String,
    /// How often the listing is restarted from `watermark - 15 min` to catch
    /// dossiers committed out of order behind the cursor.
    pub reconcile_every: Duration,
    /// How far back each deletion scan looks before the previous scan, since
    /// `dateSupression` can be backdated by weeks.
    pub deleted_lookback: Duration,
}

/// Démarches Simplifiées (GraphQL): dossiers of one démarche.
pub struct DemarchesKind;

impl Kind for DemarchesKind {
    type Config = DemarchesConfig;
    const NAME: &'static str = "demarches";
    const DEFAULT_ENDPOINT: &'static str = defaults::ENDPOINT;

    fn read(k: &mut KindKeys<'_>) -> Option<DemarchesConfig> {
        let token = k.secret("token", true);
        let demarche = k.required_int_in("demarche", 1, i64::MAX);
        let page_size = k
            .int_in("page_size", 1, 100)
            .map_or(defaults::PAGE_SIZE, |n| n as u32);
        let updated_since = k
            .rfc3339("updated_since")
            .unwrap_or_else(|| defaults::UPDATED_SINCE.to_string());
        let reconcile_every = k
            .positive_duration("reconcile_every")
            .unwrap_or(defaults::RECONCILE_EVERY);
        let deleted_lookback = k
            .duration("deleted_lookback")
            .unwrap_or(defaults::DELETED_LOOKBACK);
        Some(DemarchesConfig {
            token: token??,
            demarche: demarche?,
            page_size,
            updated_since,
            reconcile_every,
            deleted_lookback,
        })
    }

    fn secrets(cfg: &DemarchesConfig) -> Vec<Secret> {
        vec![cfg.token.clone()]
    }

    fn build(cfg: &DemarchesConfig, ctx: Build) -> Box<dyn Source> {
        Box::new(Demarches::new(
            ctx.http,
            ctx.endpoint,
            cfg.clone(),
            ctx.stop,
        ))
    }
}
