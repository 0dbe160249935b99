//! The simulated platform's data: démarches, dossiers, deletions, and the
//! mutations tests drive. Ordering indexes are kept as `(key µs, number)` sets
//! so that every listing is a keyset range scan.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::codec::Cursor;
use super::generate;
use crate::time::now_us;

/// Life-cycle state of a dossier (GraphQL `DossierState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Submitted, editable by its user.
    EnConstruction,
    /// Being examined by the administration.
    EnInstruction,
    /// Accepted.
    Accepte,
    /// Refused.
    Refuse,
    /// Closed without follow-up.
    SansSuite,
}

impl State {
    /// Whether the dossier has been decided.
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Accepte | State::Refuse | State::SansSuite)
    }
}

/// Civility of a natural person.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Civility {
    /// Monsieur.
    M,
    /// Madame.
    Mme,
}

/// Who filed the dossier.
#[derive(Clone, Debug, PartialEq)]
pub enum Applicant {
    /// A natural person (`PersonnePhysique`).
    Person {
        /// Civility, when given.
        civilite: Option<Civility>,
        /// Family name.
        nom: String,
        /// First name.
        prenom: String,
    },
    /// A company or association (`PersonneMorale`).
    Company {
        /// 14-digit establishment number.
        siret: String,
    },
}

/// The typed value of one champ.
#[derive(Clone, Debug, PartialEq)]
pub enum ChampValue {
    /// `TextChamp`.
    Text(Option<String>),
    /// `CheckboxChamp`.
    Checkbox(bool),
    /// `IntegerNumberChamp`.
    Integer(Option<i64>),
    /// `DateChamp`.
    Date(Option<chrono::NaiveDate>),
}

/// One field of a dossier's form.
#[derive(Clone, Debug, PartialEq)]
pub struct ChampData {
    /// Stable id of the field descriptor (same for every dossier).
    pub descriptor: i64,
    /// Question label.
    pub label: &'static str,
    /// Answer.
    pub value: ChampValue,
}

/// A dossier as the platform keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct DossierData {
    /// Global dossier number.
    pub number: i64,
    /// Démarche it belongs to.
    pub demarche: i64,
    /// Current state.
    pub state: State,
    /// Archived by the administration.
    pub archived: bool,
    /// Deposit (= passage en construction), µs.
    pub depot_us: i64,
    /// Last modification, µs; unique across the simulator.
    pub updated_us: i64,
    /// Passage en instruction, µs.
    pub instruction_us: Option<i64>,
    /// Decision, µs.
    pub traitement_us: Option<i64>,
    /// Decision motivation.
    pub motivation: Option<String>,
    /// The user's e-mail.
    pub email: String,
    /// The applicant.
    pub applicant: Applicant,
    /// The form's answers.
    pub champs: Vec<ChampData>,
    /// How many times it was modified after creation.
    pub revision: u32,
}

/// A deletion: pending (hidden, reversible) or purged.
#[derive(Clone, Debug, PartialEq)]
pub struct Deletion {
    /// `dateSupression`, µs.
    pub at_us: i64,
    /// `reason`.
    pub reason: &'static str,
    /// Purged for good (in `deletedDossiers`) rather than hidden.
    pub purged: bool,
}

/// One démarche and its ordering indexes.
#[derive(Debug, Default)]
pub struct Demarche {
    /// Title.
    pub title: String,
    /// Live dossiers by (last modification, number).
    pub by_update: BTreeSet<(i64, i64)>,
    /// Live dossiers by (deposit, number).
    pub by_depot: BTreeSet<(i64, i64)>,
    /// Hidden dossiers by (deletion, number).
    pub pending: BTreeSet<(i64, i64)>,
    /// Purged dossiers by (deletion, number).
    pub purged: BTreeSet<(i64, i64)>,
}

/// Which listing of a démarche.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing {
    /// `dossiers(updatedSince: ...)`.
    ByUpdate,
    /// `dossiers` without `updatedSince`.
    ByDepot,
    /// `pendingDeletedDossiers`.
    Pending,
    /// `deletedDossiers`.
    Purged,
}

impl Listing {
    /// The cursor tag of this ordering.
    fn tag(self) -> char {
        match self {
            Listing::ByUpdate => 'u',
            Listing::ByDepot => 'd',
            Listing::Pending => 'p',
            Listing::Purged => 'x',
        }
    }
}

/// One page of a keyset listing.
#[derive(Debug, Default)]
pub struct Page {
    /// The rows, as (key µs, number).
    pub rows: Vec<(i64, i64)>,
    /// Whether more rows follow.
    pub has_next: bool,
}

/// A request for one page.
#[derive(Clone, Copy, Debug)]
pub struct PageQuery {
    /// Inclusive lower bound on the key, µs.
    pub since: Option<i64>,
    /// Start strictly after this position.
    pub after: Option<Cursor>,
    /// Descending order.
    pub desc: bool,
    /// Page size.
    pub first: usize,
}

/// Why a page could not be listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageError {
    /// The cursor belongs to another ordering.
    ForeignCursor,
}

/// All the simulated data.
pub struct Store {
    /// Démarches by number.
    pub demarches: HashMap<i64, Demarche>,
    /// Every dossier ever created (live, hidden or purged) by number.
    pub dossiers: HashMap<i64, Arc<DossierData>>,
    /// Hidden or purged dossiers.
    pub deletions: HashMap<i64, Deletion>,
    /// Each dossier's `DossierFields` as JSON text, rendered when it was
    /// stored, with the version it was rendered from.
    rendered: HashMap<i64, (Arc<DossierData>, Arc<str>)>,
    next_number: i64,
    clock_us: i64,
    rng: StdRng,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// An empty platform.
    pub fn new() -> Self {
        Store {
            demarches: HashMap::new(),
            dossiers: HashMap::new(),
            deletions: HashMap::new(),
            rendered: HashMap::new(),
            next_number: 10_001,
            clock_us: 0,
            rng: StdRng::seed_from_u64(0x00d5_5eed),
        }
    }

    /// A strictly increasing "now", µs.
    pub fn tick(&mut self) -> i64 {
        self.clock_us = now_us().max(self.clock_us + 1);
        self.clock_us
    }

    /// The démarche, created if absent.
    pub fn demarche_mut(&mut self, number: i64) -> &mut Demarche {
        self.demarches.entry(number).or_insert_with(|| Demarche {
            title: generate::title(number),
            ..Demarche::default()
        })
    }

    fn next_number(&mut self) -> i64 {
        let n = self.next_number;
        self.next_number += 1;
        n
    }

    fn index_live(&mut self, dossier: &DossierData) {
        let d = self.demarche_mut(dossier.demarche);
        d.by_update.insert((dossier.updated_us, dossier.number));
        d.by_depot.insert((dossier.depot_us, dossier.number));
    }

    fn unindex_live(&mut self, dossier: &DossierData) {
        let d = self.demarche_mut(dossier.demarche);
        d.by_update.remove(&(dossier.updated_us, dossier.number));
        d.by_depot.remove(&(dossier.depot_us, dossier.number));
    }

    fn insert(&mut self, dossier: DossierData) {
        self.index_live(&dossier);
        let number = dossier.number;
        let dossier = Arc::new(dossier);
        let text = Arc::from(super::fast::render_dossier(&dossier));
        self.rendered.insert(number, (dossier.clone(), text));
        self.dossiers.insert(number, dossier);
    }

    /// The dossier's `DossierFields` as JSON text: the one rendered when it
    /// was stored, or rendered now if the dossier was replaced otherwise.
    pub fn rendered(&self, number: i64) -> Option<Arc<str>> {
        let dossier = self.dossiers.get(&number)?;
        match self.rendered.get(&number) {
            Some((version, text)) if Arc::ptr_eq(version, dossier) => Some(text.clone()),
            _ => Some(Arc::from(super::fast::render_dossier(dossier))),
        }
    }

    /// Adds `n` dossiers with distinct modification times spread over the past
    /// days (never before an instant already handed out), returns their numbers.
    pub fn seed(&mut self, demarche: i64, n: usize) -> Vec<i64> {
        self.demarche_mut(demarche);
        if n == 0 {
            return Vec::new();
        }
        let existing = self
            .demarches
            .get(&demarche)
            .map_or(0, |d| d.by_update.len());
        let mut rng = StdRng::seed_from_u64(((demarche as u64) << 20) ^ existing as u64);
        let now = now_us();
        let start = (now - 7 * 86_400_000_000).max(self.clock_us + 1);
        let end = now.max(start + 1);
        let mut times: Vec<i64> = (0..n)
            .map(|_| rand::Rng::random_range(&mut rng, start..end))
            .collect();
        times.sort_unstable();
        let mut t = self.clock_us;
        let mut numbers = Vec::with_capacity(n);
        for candidate in times {
            t = candidate.max(t + 1);
            let number = self.next_number();
            let dossier = generate::dossier(&mut rng, number, demarche, t);
            self.insert(dossier);
            numbers.push(number);
        }
        self.clock_us = self.clock_us.max(t);
        numbers
    }

    /// A new dossier in `en_construction`, deposited and modified now.
    pub fn create(&mut self, demarche: i64) -> i64 {
        let now = self.tick();
        let number = self.next_number();
        let dossier = generate::fresh(&mut self.rng, number, demarche, now);
        self.insert(dossier);
        number
    }

    /// Whether the dossier is visible in `dossiers`.
    pub fn is_live(&self, number: i64) -> bool {
        self.dossiers.contains_key(&number) && !self.deletions.contains_key(&number)
    }

    /// Modifies a live dossier (a champ, maybe its state) and bumps its
    /// modification date. Unknown or deleted dossiers are ignored.
    pub fn update(&mut self, number: i64) {
        if !self.is_live(number) {
            return;
        }
        let Some(old) = self.dossiers.get(&number).cloned() else {
            return;
        };
        let now = self.tick();
        self.unindex_live(&old);
        let mut new = (*old).clone();
        generate::modify(&mut self.rng, &mut new, now);
        new.updated_us = now;
        self.insert(new);
    }

    /// Hides a live dossier: it leaves `dossiers` for `pendingDeletedDossiers`.
    pub fn hide(&mut self, number: i64) {
        if !self.is_live(number) {
            return;
        }
        let Some(dossier) = self.dossiers.get(&number).cloned() else {
            return;
        };
        let at = self.tick();
        self.unindex_live(&dossier);
        self.demarche_mut(dossier.demarche)
            .pending
            .insert((at, number));
        self.deletions.insert(
            number,
            Deletion {
                at_us: at,
                reason: "instructeur_request",
                purged: false,
            },
        );
    }

    /// Brings a hidden dossier back into `dossiers` with a new modification date.
    pub fn restore(&mut self, number: i64) {
        let at = match self.deletions.get(&number) {
            Some(d) if !d.purged => d.at_us,
            _ => return,
        };
        let Some(old) = self.dossiers.get(&number).cloned() else {
            return;
        };
        self.deletions.remove(&number);
        self.demarche_mut(old.demarche)
            .pending
            .remove(&(at, number));
        let now = self.tick();
        let mut new = (*old).clone();
        new.updated_us = now;
        self.insert(new);
    }

    /// Purges a live or hidden dossier into `deletedDossiers`, its deletion
    /// date set back by `backdate_us`.
    pub fn purge(&mut self, number: i64, backdate_us: i64) {
        let Some(dossier) = self.dossiers.get(&number).cloned() else {
            return;
        };
        let reason = match self.deletions.get(&number).cloned() {
            Some(d) if d.purged => return,
            Some(d) => {
                self.demarche_mut(dossier.demarche)
                    .pending
                    .remove(&(d.at_us, number));
                d.reason
            }
            None => {
                self.unindex_live(&dossier);
                "expired"
            }
        };
        let at = self.tick().saturating_sub(backdate_us.max(0));
        self.demarche_mut(dossier.demarche)
            .purged
            .insert((at, number));
        self.deletions.insert(
            number,
            Deletion {
                at_us: at,
                reason,
                purged: true,
            },
        );
    }

    /// Numbers of the démarche's live dossiers, ascending.
    pub fn live_numbers(&self, demarche: i64) -> Vec<i64> {
        let mut v: Vec<i64> = self
            .demarches
            .get(&demarche)
            .map(|d| d.by_update.iter().map(|k| k.1).collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// Numbers of the démarche's hidden and purged dossiers, ascending.
    pub fn deleted_numbers(&self, demarche: i64) -> Vec<i64> {
        let mut v: Vec<i64> = self
            .demarches
            .get(&demarche)
            .map(|d| {
                d.pending
                    .iter()
                    .chain(d.purged.iter())
                    .map(|k| k.1)
                    .collect()
            })
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// One keyset page of a listing.
    pub fn page(&self, demarche: i64, listing: Listing, q: PageQuery) -> Result<Page, PageError> {
        let Some(d) = self.demarches.get(&demarche) else {
            return Ok(Page::default());
        };
        let set = match listing {
            Listing::ByUpdate => &d.by_update,
            Listing::ByDepot => &d.by_depot,
            Listing::Pending => &d.pending,
            Listing::Purged => &d.purged,
        };
        let after = match q.after {
            Some(c) if c.tag != listing.tag() => return Err(PageError::ForeignCursor),
            Some(c) => Some((c.key, c.number)),
            None => None,
        };
        let since = q.since.map(|s| (s, i64::MIN));
        let mut rows: Vec<(i64, i64)> = if q.desc {
            let upper = after.map_or(Bound::Unbounded, Bound::Excluded);
            set.range((Bound::Unbounded, upper))
                .rev()
                .take_while(|k| since.is_none_or(|s| **k >= s))
                .take(q.first + 1)
                .copied()
                .collect()
        } else {
            let lower = match (since, after) {
                (Some(s), Some(a)) if s > a => Bound::Included(s),
                (_, Some(a)) => Bound::Excluded(a),
                (Some(s), None) => Bound::Included(s),
                (None, None) => Bound::Unbounded,
            };
            set.range((lower, Bound::Unbounded))
                .take(q.first + 1)
                .copied()
                .collect()
        };
        let has_next = rows.len() > q.first;
        rows.truncate(q.first);
        Ok(Page { rows, has_next })
    }

    /// The cursor of a row of a listing.
    pub fn cursor(listing: Listing, row: (i64, i64)) -> Cursor {
        Cursor {
            tag: listing.tag(),
            key: row.0,
            number: row.1,
        }
    }
}
