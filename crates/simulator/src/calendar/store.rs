//! The simulated calendars: events, their change log, and the mutations tests
//! drive. Every mutation takes a store-wide sequence number; an event's entry
//! in its calendar's change log is keyed by its latest one, so an incremental
//! listing is a range scan over `(watermark, upper]`.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

use super::generate::{self, TIME_ZONE, format_ms};
use super::tokens::{Token, fnv};
use crate::demarches::codec::base64;
use crate::text::Cached;
use crate::time::now_us;

/// A series of occurrences (`RRULE:FREQ=DAILY|WEEKLY;...;COUNT=n`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recurrence {
    /// Start of the first occurrence, µs.
    pub start_us: i64,
    /// Time between two occurrences, µs.
    pub step_us: i64,
    /// Number of occurrences.
    pub count: u32,
    /// Duration of each occurrence, µs.
    pub duration_us: i64,
}

impl Recurrence {
    /// Start of occurrence `k` (0-based), µs.
    pub fn occurrence_us(&self, k: u32) -> i64 {
        self.start_us + i64::from(k) * self.step_us
    }

    /// End of the last occurrence, µs.
    pub fn last_end_us(&self) -> i64 {
        self.occurrence_us(self.count.saturating_sub(1)) + self.duration_us
    }
}

/// Status of a cancelled event.
pub const CANCELLED: &str = "cancelled";

/// One event (or one cancelled instance of a recurring event).
#[derive(Clone, Debug)]
pub struct Event {
    /// Event id.
    pub id: String,
    /// Position in the full listing (creation order).
    pub ordinal: u64,
    /// Store sequence number of its latest change.
    pub seq: u64,
    /// `confirmed`, `tentative` or `cancelled`.
    pub status: &'static str,
    /// Creation, ms.
    pub created_ms: i64,
    /// Last modification, ms.
    pub updated_ms: i64,
    /// iCalendar SEQUENCE.
    pub sequence: u32,
    /// The descriptive fields (summary, start, end...).
    pub fields: Map<String, Value>,
    /// First instant covered and end of the last occurrence, µs.
    pub span: (i64, i64),
    /// The series, for recurring events.
    pub recurrence: Option<Recurrence>,
    /// For an instance exception: the recurring event's id and the
    /// instance's original start, µs.
    pub instance_of: Option<(String, i64)>,
    /// [`Event::render`] as text, cleared by every change.
    pub rendered: Cached,
}

impl Event {
    /// Whether the event is a deletion.
    pub fn is_cancelled(&self) -> bool {
        self.status == CANCELLED
    }

    /// The quoted etag; it changes with every modification.
    pub fn etag(&self) -> String {
        format!("\"{}{:06}\"", self.updated_ms, self.seq % 1_000_000)
    }

    /// The event as `events.list` returns it: complete when live, a stub
    /// (`kind`, `etag`, `id`, `status`, and for an instance
    /// `recurringEventId`, `originalStartTime`) when cancelled.
    pub fn render(&self, calendar_id: &str) -> Value {
        let mut out = Map::new();
        out.insert("kind".into(), json!("calendar#event"));
        out.insert("etag".into(), json!(self.etag()));
        out.insert("id".into(), json!(self.id));
        out.insert("status".into(), json!(self.status));
        if let Some((recurring, start)) = &self.instance_of {
            out.insert("recurringEventId".into(), json!(recurring));
            out.insert("originalStartTime".into(), generate::date_time(*start));
        }
        if self.is_cancelled() {
            return Value::Object(out);
        }
        let eid = base64(&format!("{} {calendar_id}", self.id));
        out.insert(
            "htmlLink".into(),
            json!(format!(
                "https://www.google.com/calendar/event?eid={}",
                eid.trim_end_matches('=')
            )),
        );
        out.insert("created".into(), json!(format_ms(self.created_ms)));
        out.insert("updated".into(), json!(format_ms(self.updated_ms)));
        for (k, v) in &self.fields {
            out.insert(k.clone(), v.clone());
        }
        out.insert("iCalUID".into(), json!(format!("{}@google.com", self.id)));
        out.insert("sequence".into(), json!(self.sequence));
        out.insert("reminders".into(), json!({ "useDefault": true }));
        out.insert("eventType".into(), json!("default"));
        Value::Object(out)
    }

    /// [`Event::render`] as JSON text, rendered once per version (an event
    /// belongs to one calendar, so `calendar_id` is always the same).
    pub fn text(&self, calendar_id: &str) -> Arc<str> {
        self.rendered.get_or_render(|| self.render(calendar_id))
    }
}

/// One calendar and its indexes.
#[derive(Debug, Default)]
pub struct Calendar {
    /// Every event still known upstream, by id.
    pub events: HashMap<String, Event>,
    /// Event ids by ordinal (full listing order).
    pub by_ordinal: BTreeMap<u64, String>,
    /// Event ids by the sequence number of their latest change.
    pub changes: BTreeMap<u64, String>,
    /// Sync tokens with a serial up to this one get 410.
    pub expired_upto: u64,
    /// Sync tokens with a serial up to this one get 400.
    pub invalid_upto: u64,
    /// Latest modification of the calendar, ms.
    pub updated_ms: i64,
}

/// Filters of a full listing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Filter {
    /// Include cancelled events (cancelled instances always are).
    pub show_deleted: bool,
    /// Only events ending after this instant, µs.
    pub time_min: Option<i64>,
    /// Only events starting before this instant, µs.
    pub time_max: Option<i64>,
}

impl Filter {
    fn matches(&self, e: &Event) -> bool {
        if e.is_cancelled() && e.instance_of.is_none() && !self.show_deleted {
            return false;
        }
        self.time_min.is_none_or(|t| e.span.1 > t) && self.time_max.is_none_or(|t| e.span.0 < t)
    }
}

/// Why a sync token is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncTokenError {
    /// Expired: 410 `fullSyncRequired`.
    Expired,
    /// Invalidated, garbage or from another calendar: 400 "Invalid sync token value.".
    Invalid,
}

/// All the simulated calendars.
pub struct Store {
    /// Calendars by id.
    pub calendars: HashMap<String, Calendar>,
    seq: u64,
    ordinal: u64,
    serial: u64,
    clock_ms: i64,
    rng: StdRng,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// No calendar yet.
    pub fn new() -> Self {
        Store {
            calendars: HashMap::new(),
            seq: 0,
            ordinal: 0,
            serial: 0,
            clock_ms: 0,
            rng: StdRng::seed_from_u64(0x00ca_1e4d),
        }
    }

    /// The latest sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// A strictly increasing "now", ms.
    fn tick_ms(&mut self) -> i64 {
        self.clock_ms = (now_us() / 1000).max(self.clock_ms + 1);
        self.clock_ms
    }

    fn calendar_mut(&mut self, calendar_id: &str) -> &mut Calendar {
        self.calendars.entry(calendar_id.to_string()).or_default()
    }

    /// Adds `event` with a new ordinal and sequence number.
    fn insert(&mut self, calendar_id: &str, mut event: Event) -> String {
        self.seq += 1;
        self.ordinal += 1;
        event.seq = self.seq;
        event.ordinal = self.ordinal;
        let id = event.id.clone();
        // Rendered now, so that serving it is a copy.
        event.rendered.clear();
        event.text(calendar_id);
        let cal = self.calendar_mut(calendar_id);
        cal.updated_ms = cal.updated_ms.max(event.updated_ms);
        cal.by_ordinal.insert(event.ordinal, id.clone());
        cal.changes.insert(event.seq, id.clone());
        cal.events.insert(id.clone(), event);
        id
    }

    /// Records a modification of an existing event (new sequence number,
    /// `updated`), after `change` was applied to it.
    fn touch(&mut self, calendar_id: &str, id: &str, change: impl FnOnce(&mut Event, &mut StdRng)) {
        let now = self.tick_ms();
        let seq = self.seq + 1;
        let Some(cal) = self.calendars.get_mut(calendar_id) else {
            return;
        };
        let Some(event) = cal.events.get_mut(id) else {
            return;
        };
        change(event, &mut self.rng);
        cal.changes.remove(&event.seq);
        event.seq = seq;
        event.updated_ms = now;
        event.rendered.clear();
        cal.changes.insert(seq, id.to_string());
        cal.updated_ms = cal.updated_ms.max(now);
        self.seq = seq;
    }

    fn generated(&mut self, calendar_id: &str, created_ms: i64, updated_ms: i64) -> Event {
        let g = generate::event(&mut self.rng, calendar_id, now_us());
        Event {
            id: generate::new_id(&mut self.rng),
            ordinal: 0,
            seq: 0,
            status: g.status,
            created_ms,
            updated_ms,
            sequence: 0,
            fields: g.fields,
            span: g.span,
            recurrence: g.recurrence,
            instance_of: None,
            rendered: Cached::default(),
        }
    }

    /// Creates the calendar if absent and adds `n` events created and
    /// modified over the past 90 days; returns their ids.
    pub fn seed(&mut self, calendar_id: &str, n: usize) -> Vec<String> {
        self.calendar_mut(calendar_id);
        let now = now_us();
        (0..n)
            .map(|_| {
                let (created, updated) = generate::history(&mut self.rng, now);
                let event = self.generated(calendar_id, created, updated);
                self.insert(calendar_id, event)
            })
            .collect()
    }

    /// A new event, created now; returns its id.
    pub fn create(&mut self, calendar_id: &str) -> String {
        let now = self.tick_ms();
        let event = self.generated(calendar_id, now, now);
        self.insert(calendar_id, event)
    }

    fn is_live(&self, calendar_id: &str, id: &str) -> bool {
        self.calendars
            .get(calendar_id)
            .and_then(|c| c.events.get(id))
            .is_some_and(|e| !e.is_cancelled())
    }

    /// Modifies a live event: new title, sometimes a new place or text,
    /// `sequence` + 1. Unknown or cancelled events are ignored.
    pub fn update(&mut self, calendar_id: &str, id: &str) {
        if !self.is_live(calendar_id, id) {
            return;
        }
        self.touch(calendar_id, id, |e, rng| {
            let old = e.fields.get("summary").cloned();
            let mut summary = generate::title(rng);
            if old.as_ref().and_then(Value::as_str) == Some(summary.as_str()) {
                summary.push_str(" (reporté)");
            }
            e.fields.insert("summary".into(), json!(summary));
            if rng.random_bool(0.5) {
                e.fields
                    .insert("location".into(), json!(generate::location(rng)));
            } else {
                e.fields
                    .insert("description".into(), json!(generate::description(rng)));
            }
            e.sequence += 1;
        });
    }

    /// Cancels a live event: it becomes a deletion reported to every sync
    /// token issued before.
    pub fn cancel(&mut self, calendar_id: &str, id: &str) {
        if !self.is_live(calendar_id, id) {
            return;
        }
        self.touch(calendar_id, id, |e, _| e.status = CANCELLED);
    }

    /// Adds a cancelled exception for the first occurrence (after the
    /// first) of a live recurring event that has none yet; returns its id,
    /// or an empty string when `recurring_id` is not a live recurring event
    /// or every occurrence is already cancelled.
    pub fn cancel_instance(&mut self, calendar_id: &str, recurring_id: &str) -> String {
        let Some(cal) = self.calendars.get(calendar_id) else {
            return String::new();
        };
        let Some(base) = cal.events.get(recurring_id).filter(|e| !e.is_cancelled()) else {
            return String::new();
        };
        let Some(r) = base.recurrence else {
            return String::new();
        };
        let free = (1..r.count)
            .chain(std::iter::once(0))
            .map(|k| r.occurrence_us(k))
            .map(|start| {
                let id = format!("{recurring_id}_{}", generate::instance_suffix(start));
                (id, start)
            })
            .find(|(id, _)| !cal.events.contains_key(id));
        let Some((id, start)) = free else {
            return String::new();
        };
        let now = self.tick_ms();
        let event = Event {
            id,
            ordinal: 0,
            seq: 0,
            status: CANCELLED,
            created_ms: now,
            updated_ms: now,
            sequence: 0,
            fields: Map::new(),
            span: (start, start + r.duration_us),
            recurrence: None,
            instance_of: Some((recurring_id.to_string(), start)),
            rendered: Cached::default(),
        };
        self.insert(calendar_id, event)
    }

    /// Forgets an event without ever reporting it.
    pub fn purge_silently(&mut self, calendar_id: &str, id: &str) {
        let Some(cal) = self.calendars.get_mut(calendar_id) else {
            return;
        };
        if let Some(e) = cal.events.remove(id) {
            cal.by_ordinal.remove(&e.ordinal);
            cal.changes.remove(&e.seq);
        }
    }

    /// Every live event, rendered, in listing order.
    pub fn live_events(&self, calendar_id: &str) -> Vec<Value> {
        let Some(cal) = self.calendars.get(calendar_id) else {
            return Vec::new();
        };
        cal.by_ordinal
            .values()
            .filter_map(|id| cal.events.get(id))
            .filter(|e| !e.is_cancelled())
            .map(|e| e.render(calendar_id))
            .collect()
    }

    /// Ids of the cancelled events and instances still known, in listing order.
    pub fn cancelled_ids(&self, calendar_id: &str) -> Vec<String> {
        let Some(cal) = self.calendars.get(calendar_id) else {
            return Vec::new();
        };
        cal.by_ordinal
            .values()
            .filter(|id| cal.events.get(*id).is_some_and(Event::is_cancelled))
            .cloned()
            .collect()
    }

    /// Every sync token issued so far for the calendar gets 410.
    pub fn expire_sync_tokens(&mut self, calendar_id: &str) {
        let serial = self.serial;
        self.calendar_mut(calendar_id).expired_upto = serial;
    }

    /// Every sync token issued so far for the calendar gets 400.
    pub fn invalidate_sync_tokens(&mut self, calendar_id: &str) {
        let serial = self.serial;
        self.calendar_mut(calendar_id).invalid_upto = serial;
    }

    /// A new sync token reporting the changes after `watermark`.
    pub fn issue_sync_token(&mut self, calendar_id: &str, watermark: u64) -> String {
        self.serial += 1;
        Token::Sync {
            cal: fnv(calendar_id),
            watermark,
            serial: self.serial,
        }
        .encode()
    }

    /// The watermark of a sync token, if it is still accepted.
    pub fn check_sync_token(&self, calendar_id: &str, text: &str) -> Result<u64, SyncTokenError> {
        let Some(Token::Sync {
            cal,
            watermark,
            serial,
        }) = Token::decode(text)
        else {
            return Err(SyncTokenError::Invalid);
        };
        let Some(c) = self.calendars.get(calendar_id) else {
            return Err(SyncTokenError::Invalid);
        };
        if cal != fnv(calendar_id) || serial <= c.invalid_upto {
            Err(SyncTokenError::Invalid)
        } else if serial <= c.expired_upto {
            Err(SyncTokenError::Expired)
        } else {
            Ok(watermark)
        }
    }

    /// Up to `max` events of a full listing after ordinal `after`, and the
    /// ordinal to continue from when more follow.
    pub fn full_page(
        &self,
        calendar_id: &str,
        filter: Filter,
        after: u64,
        max: usize,
    ) -> (Vec<Arc<str>>, Option<u64>) {
        let Some(cal) = self.calendars.get(calendar_id) else {
            return (Vec::new(), None);
        };
        let mut items = Vec::new();
        let mut last = after;
        let matching = cal
            .by_ordinal
            .range((Bound::Excluded(after), Bound::Unbounded))
            .filter_map(|(_, id)| cal.events.get(id))
            .filter(|e| filter.matches(e));
        for e in matching {
            if items.len() == max {
                return (items, Some(last));
            }
            last = e.ordinal;
            items.push(e.text(calendar_id));
        }
        (items, None)
    }

    /// Up to `max` changes with a sequence number in `(after, upper]`, and
    /// the sequence number to continue from when more follow. Cancelled
    /// entries are stubs.
    pub fn changes_page(
        &self,
        calendar_id: &str,
        after: u64,
        upper: u64,
        max: usize,
    ) -> (Vec<Arc<str>>, Option<u64>) {
        let Some(cal) = self.calendars.get(calendar_id) else {
            return (Vec::new(), None);
        };
        if after >= upper {
            return (Vec::new(), None);
        }
        let mut items = Vec::new();
        let mut last = after;
        let range = cal
            .changes
            .range((Bound::Excluded(after), Bound::Included(upper)));
        for (seq, id) in range {
            let Some(e) = cal.events.get(id) else {
                continue;
            };
            if items.len() == max {
                return (items, Some(last));
            }
            last = *seq;
            items.push(e.text(calendar_id));
        }
        (items, None)
    }

    /// The `updated` of the calendar, RFC 3339 with ms.
    pub fn calendar_updated(&self, calendar_id: &str) -> String {
        let ms = self.calendars.get(calendar_id).map_or(0, |c| c.updated_ms);
        format_ms(ms)
    }
}

/// The time zone every calendar reports.
pub fn time_zone() -> &'static str {
    TIME_ZONE
}
