//! Consecutive pages of a group commit, cut into batches whose rows each
//! backend writes with few statements (SQLite: multi-row `VALUES`;
//! Postgres: arrays through `UNNEST`), in page order, with the same result
//! as page-by-page writes. Backend-neutral: only the writing differs.

use std::collections::HashSet;

use serde_json::value::RawValue;

use crate::model::{Listing, Page, Record, Report, Tombstone};

/// One row to write: id, updated_at, updated_us, data (compact JSON). Owned
/// and moved into the statement's arguments: a payload is bound without a
/// copy (the driver copies a borrowed text into a new allocation).
pub(crate) struct Row {
    pub id: String,
    pub updated_at: String,
    pub updated_us: i64,
    pub data: String,
    /// The full listing's generation, when the row's page belongs to one.
    pub listing: Option<i64>,
}

/// Consecutive pages written as one: their rows go through the multi-row
/// statements together, in page order, so that a group of small pages
/// (Contentor's ~17 new requests each) costs a few statements, i.e. a few
/// round trips, instead of two or more per page.
///
/// Rows keep their exact order (each page's upserts, then its deletions),
/// and the backend applies them one after the other, so the result is the
/// one page-by-page statements give. What depends on the rows written so
/// far closes a batch: a page with import-state reports (queued against
/// the versions stored at that point), a page completing a full listing
/// (its sweep), and a change of listing generation (marks are written
/// after the batch's rows).
#[derive(Default)]
pub(crate) struct Batch {
    /// Runs of rows of one kind (`true`: deletions), in order.
    pub segments: Vec<(bool, Vec<Row>)>,
    /// The listing the batch's pages belong to, and the ids they listed.
    pub listing: Option<Listing>,
    pub listed: Vec<String>,
    pub reports: Vec<Report>,
}

impl Batch {
    /// Cuts consecutive pages into the batches to write, in order; `now`
    /// stamps deletions the upstream did not date.
    pub fn split(pages: Vec<Page>, now: i64) -> Vec<Batch> {
        let mut batches = Vec::new();
        let mut batch = Batch::default();
        for page in pages {
            if !batch.takes(&page) {
                batches.push(std::mem::take(&mut batch));
            }
            if batch.push(page, now) {
                batches.push(std::mem::take(&mut batch));
            }
        }
        if !batch.segments.is_empty() || batch.listing.is_some() || !batch.reports.is_empty() {
            batches.push(batch);
        }
        batches
    }

    /// Rows of every segment.
    pub fn rows(&self) -> usize {
        self.segments.iter().map(|(_, rows)| rows.len()).sum()
    }

    /// Whether `page` can join the batch (see [`Batch`]).
    fn takes(&self, page: &Page) -> bool {
        (self.segments.is_empty() && self.listing.is_none())
            || page.listing.map(|l| l.generation) == self.listing.map(|l| l.generation)
    }

    /// Adds `page`; says whether the batch must be written now.
    fn push(&mut self, page: Page, now: i64) -> bool {
        let Page {
            upserts,
            deletes,
            listing,
            reports,
            ..
        } = page;
        if let Some(l) = listing {
            // The ids a listing marks, taken before the rows move into the
            // statements (needed only if some row is left unchanged).
            self.listed.extend(upserts.iter().map(|r| r.id.clone()));
            self.listed.extend(deletes.iter().map(|t| t.id.clone()));
            self.listing = Some(l);
        }
        let generation = listing.map(|l| l.generation);
        self.add(false, upsert_rows(upserts, generation));
        self.add(true, tombstone_rows(deletes, now, generation));
        self.reports.extend(reports);
        !self.reports.is_empty() || listing.is_some_and(|l| l.complete)
    }

    fn add(&mut self, deleted: bool, rows: Vec<Row>) {
        if rows.is_empty() {
            return;
        }
        match self.segments.last_mut() {
            Some((d, run)) if *d == deleted => run.extend(rows),
            _ => self.segments.push((deleted, rows)),
        }
    }
}

fn upsert_rows(records: Vec<Record>, listing: Option<i64>) -> Vec<Row> {
    records
        .into_iter()
        .map(|r| Row {
            id: r.id,
            updated_at: r.updated_at,
            updated_us: r.updated_us,
            data: payload_text(r.data),
            listing,
        })
        .collect()
}

/// A payload's text, in the allocation it already has.
fn payload_text(data: Box<RawValue>) -> String {
    Box::<str>::from(data).into_string()
}

/// Tombstone rows, stamped with when each deletion happened: as the
/// upstream says, or now.
fn tombstone_rows(deletes: Vec<Tombstone>, now: i64, listing: Option<i64>) -> Vec<Row> {
    deletes
        .into_iter()
        .map(|t| {
            let (updated_at, updated_us) = match t.deleted_at {
                Some(at) => {
                    let us = crate::time::parse_us(&at).unwrap_or(now);
                    (at, us)
                }
                None => (crate::time::format_us(now), now),
            };
            Row {
                id: t.id,
                updated_at,
                updated_us,
                data: payload_text(t.data),
                listing,
            }
        })
        .collect()
}

/// The ids of deletions dated before `cutoff` (the last tombstone purge's):
/// each is stored only if the store holds a row for it (see
/// [`keep_held_deletions`]); the backend looks them up.
pub(crate) fn stale_deletion_ids(rows: &[Row], cutoff: i64) -> Vec<&str> {
    rows.iter()
        .filter(|r| r.updated_us < cutoff)
        .map(|r| r.id.as_str())
        .collect()
}

/// Drops the deletions dated before `cutoff` of records the store holds
/// no row for (`held`: those it does). Such a deletion is either of a
/// record never stored, which no reader saw, or one whose tombstone the
/// retention purged, which readers saw already or are told to resync
/// over: an upstream that reports deletions with a look-back (Démarches
/// Simplifiées) would otherwise bring a purged tombstone back as a new
/// change.
pub(crate) fn keep_held_deletions(rows: &mut Vec<Row>, cutoff: i64, held: &HashSet<String>) {
    rows.retain(|r| r.updated_us >= cutoff || held.contains(&r.id));
}
