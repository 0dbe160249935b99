//! The GraphQL schema subset of the platform's API v2, with its real type and
//! field names, resolved against the [`Store`].

use std::sync::Arc;

use async_graphql::{
    Context, EmptyMutation, EmptySubscription, Enum, ErrorExtensions, ID, InputValueError,
    InputValueResult, Interface, Object, Result, Scalar, ScalarType, SimpleObject, Value,
};

use super::Shared;
use super::codec::{Cursor, graphql_id};
use super::generate::french_date;
use super::store::{
    Applicant, ChampData, ChampValue, Civility, DossierData, Listing, PageError, PageQuery, State,
    Store,
};
use crate::time::{format_paris, parse_us};

/// The executable schema.
pub type DsSchema = async_graphql::Schema<QueryRoot, EmptyMutation, EmptySubscription>;

/// Builds the schema over the shared state.
pub fn build(shared: Arc<Shared>) -> DsSchema {
    async_graphql::Schema::build(QueryRoot, EmptyMutation, EmptySubscription)
        .data(shared)
        .finish()
}

/// Which démarches the request's token may read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every démarche.
    All,
    /// Only these.
    Only(Vec<i64>),
}

impl Scope {
    /// Whether the démarche may be read.
    pub fn allows(&self, demarche: i64) -> bool {
        match self {
            Scope::All => true,
            Scope::Only(list) => list.contains(&demarche),
        }
    }
}

/// A GraphQL error with `extensions.code`.
pub fn coded(code: &'static str, message: impl Into<String>) -> async_graphql::Error {
    async_graphql::Error::new(message).extend_with(|_, e| e.set("code", code))
}

fn shared<'a>(ctx: &Context<'a>) -> Result<&'a Arc<Shared>> {
    ctx.data::<Arc<Shared>>()
}

/// Requests without a scope (none are built that way) may read nothing.
static NO_SCOPE: Scope = Scope::Only(Vec::new());

fn scope<'a>(ctx: &Context<'a>) -> &'a Scope {
    ctx.data_opt::<Scope>().unwrap_or(&NO_SCOPE)
}

fn to_int(n: i64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// `ISO8601DateTime`: read as RFC 3339 with any offset, written in Paris time
/// to the second.
#[derive(Clone, Copy, Debug)]
pub struct Iso8601DateTime(pub i64);

#[Scalar(name = "ISO8601DateTime")]
impl ScalarType for Iso8601DateTime {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::String(s) => parse_us(s)
                .map(Iso8601DateTime)
                .ok_or_else(|| InputValueError::custom(format!("invalid ISO8601DateTime: {s}"))),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(format_paris(self.0))
    }
}

/// `ISO8601Date`: `2024-03-01`.
#[derive(Clone, Copy, Debug)]
pub struct Iso8601Date(pub chrono::NaiveDate);

#[Scalar(name = "ISO8601Date")]
impl ScalarType for Iso8601Date {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::String(s) => chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .map(Iso8601Date)
                .map_err(|_| InputValueError::custom(format!("invalid ISO8601Date: {s}"))),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.format("%Y-%m-%d").to_string())
    }
}

/// `BigInt`: an integer transported as a string.
#[derive(Clone, Copy, Debug)]
pub struct BigInt(pub i64);

#[Scalar(name = "BigInt")]
impl ScalarType for BigInt {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::String(s) => s
                .parse()
                .map(BigInt)
                .map_err(|_| InputValueError::custom(format!("invalid BigInt: {s}"))),
            Value::Number(n) => n
                .as_i64()
                .map(BigInt)
                .ok_or_else(|| InputValueError::custom("invalid BigInt")),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.to_string())
    }
}

/// `DossierState`.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[graphql(name = "DossierState", rename_items = "snake_case")]
pub enum DossierState {
    /// En construction.
    EnConstruction,
    /// En instruction.
    EnInstruction,
    /// Accepté.
    Accepte,
    /// Refusé.
    Refuse,
    /// Classé sans suite.
    SansSuite,
}

impl From<State> for DossierState {
    fn from(s: State) -> Self {
        match s {
            State::EnConstruction => DossierState::EnConstruction,
            State::EnInstruction => DossierState::EnInstruction,
            State::Accepte => DossierState::Accepte,
            State::Refuse => DossierState::Refuse,
            State::SansSuite => DossierState::SansSuite,
        }
    }
}

/// `Civilite`.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Civilite {
    /// Monsieur.
    #[graphql(name = "M")]
    M,
    /// Madame.
    #[graphql(name = "Mme")]
    Mme,
}

/// `Order`.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Ascending.
    #[graphql(name = "ASC")]
    Asc,
    /// Descending.
    #[graphql(name = "DESC")]
    Desc,
}

/// The query root.
pub struct QueryRoot;

#[Object(name = "Query")]
impl QueryRoot {
    /// A démarche, by number.
    async fn demarche(&self, ctx: &Context<'_>, number: i32) -> Result<Option<Demarche>> {
        let number = i64::from(number);
        if !shared(ctx)?.store().demarches.contains_key(&number) {
            return Err(coded("not_found", format!("Demarche not found: {number}")));
        }
        if !scope(ctx).allows(number) {
            return Err(coded("unauthorized", "Permissions insuffisantes"));
        }
        Ok(Some(Demarche { number }))
    }

    /// A dossier, by number.
    async fn dossier(&self, ctx: &Context<'_>, number: i32) -> Result<Option<Dossier>> {
        let number = i64::from(number);
        let store = shared(ctx)?.store();
        let dossier = match store.dossiers.get(&number) {
            Some(d) if store.is_live(number) => d.clone(),
            _ => return Err(coded("not_found", format!("Dossier not found: {number}"))),
        };
        drop(store);
        if !scope(ctx).allows(dossier.demarche) {
            return Err(coded("unauthorized", "Permissions insuffisantes"));
        }
        Ok(Some(Dossier(dossier)))
    }
}

/// `PageInfo`.
#[derive(SimpleObject, Clone, Debug)]
pub struct PageInfo {
    /// More rows after this page.
    has_next_page: bool,
    /// The page started after a cursor.
    has_previous_page: bool,
    /// Cursor of the first row.
    start_cursor: Option<String>,
    /// Cursor of the last row; null on an empty page.
    end_cursor: Option<String>,
}

/// `DossierEdge`.
#[derive(SimpleObject)]
pub struct DossierEdge {
    /// Position of the node.
    cursor: String,
    /// The dossier.
    node: Dossier,
}

/// `DossierConnection`.
#[derive(SimpleObject)]
pub struct DossierConnection {
    /// Pagination.
    page_info: PageInfo,
    /// The dossiers.
    nodes: Vec<Dossier>,
    /// The dossiers with their cursors.
    edges: Vec<DossierEdge>,
}

/// `DeletedDossierEdge`.
#[derive(SimpleObject)]
pub struct DeletedDossierEdge {
    /// Position of the node.
    cursor: String,
    /// The deleted dossier.
    node: DeletedDossier,
}

/// `DeletedDossierConnection`.
#[derive(SimpleObject)]
pub struct DeletedDossierConnection {
    /// Pagination.
    page_info: PageInfo,
    /// The deleted dossiers.
    nodes: Vec<DeletedDossier>,
    /// The deleted dossiers with their cursors.
    edges: Vec<DeletedDossierEdge>,
}

/// The pagination arguments of a connection field.
struct PageArgs {
    first: Option<i32>,
    after: Option<String>,
    since: Option<Iso8601DateTime>,
    order: Option<Order>,
}

/// Reads `first`/`after`, lists one page, and renders each row with `node`.
fn list<T>(
    ctx: &Context<'_>,
    demarche: i64,
    listing: Listing,
    args: PageArgs,
    node: impl Fn(&Store, i64) -> Option<T>,
) -> Result<(PageInfo, Vec<(String, T)>)> {
    let PageArgs {
        first,
        after,
        since,
        order,
    } = args;
    let first = match first {
        None => 100,
        Some(n) if n < 0 => return Err(coded("bad_request", "first must be positive")),
        Some(n) => usize::try_from(n).unwrap_or(100).min(100),
    };
    let after = match after.as_deref() {
        None => None,
        Some(text) => match Cursor::decode(text) {
            Some(c) => Some(c),
            None => return Err(coded("bad_request", format!("invalid cursor: {text}"))),
        },
    };
    let query = PageQuery {
        since: since.map(|s| s.0),
        after,
        desc: order == Some(Order::Desc),
        first,
    };
    let store = shared(ctx)?.store();
    let page = store.page(demarche, listing, query).map_err(|e| match e {
        PageError::ForeignCursor => coded("bad_request", "cursor does not match this listing"),
    })?;
    let rows: Vec<(String, T)> = page
        .rows
        .iter()
        .filter_map(|row| Some((Store::cursor(listing, *row).encode(), node(&store, row.1)?)))
        .collect();
    drop(store);
    let info = PageInfo {
        has_next_page: page.has_next,
        has_previous_page: after.is_some(),
        start_cursor: rows.first().map(|r| r.0.clone()),
        end_cursor: rows.last().map(|r| r.0.clone()),
    };
    Ok((info, rows))
}

fn deleted_node(store: &Store, number: i64) -> Option<DeletedDossier> {
    let d = store.dossiers.get(&number)?;
    let del = store.deletions.get(&number)?;
    Some(DeletedDossier {
        id: if del.purged {
            graphql_id("DeletedDossier", number)
        } else {
            graphql_id("Dossier", number)
        },
        number,
        state: d.state.into(),
        reason: del.reason.to_string(),
        date_supression: Iso8601DateTime(del.at_us),
    })
}

/// `Demarche`.
pub struct Demarche {
    number: i64,
}

#[Object]
impl Demarche {
    /// GraphQL id.
    async fn id(&self) -> ID {
        ID(graphql_id("Procedure", self.number))
    }

    /// Number.
    async fn number(&self) -> i32 {
        to_int(self.number)
    }

    /// Title.
    async fn title(&self, ctx: &Context<'_>) -> Result<String> {
        let store = shared(ctx)?.store();
        Ok(store
            .demarches
            .get(&self.number)
            .map(|d| d.title.clone())
            .unwrap_or_default())
    }

    /// The visible dossiers: by (modification, number) from `updatedSince`
    /// (inclusive), else by (deposit, number).
    async fn dossiers(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        updated_since: Option<Iso8601DateTime>,
        order: Option<Order>,
    ) -> Result<DossierConnection> {
        let listing = if updated_since.is_some() {
            Listing::ByUpdate
        } else {
            Listing::ByDepot
        };
        let (page_info, rows) = list(
            ctx,
            self.number,
            listing,
            PageArgs {
                first,
                after,
                since: updated_since,
                order,
            },
            |store, n| store.dossiers.get(&n).cloned().map(Dossier),
        )?;
        let nodes = rows.iter().map(|r| r.1.clone()).collect();
        let edges = rows
            .into_iter()
            .map(|(cursor, node)| DossierEdge { cursor, node })
            .collect();
        Ok(DossierConnection {
            page_info,
            nodes,
            edges,
        })
    }

    /// Dossiers hidden (reversibly), by (deletion, number) from `deletedSince`.
    async fn pending_deleted_dossiers(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        deleted_since: Option<Iso8601DateTime>,
        order: Option<Order>,
    ) -> Result<DeletedDossierConnection> {
        let (page_info, rows) = list(
            ctx,
            self.number,
            Listing::Pending,
            PageArgs {
                first,
                after,
                since: deleted_since,
                order,
            },
            deleted_node,
        )?;
        Ok(deleted_connection(page_info, rows))
    }

    /// Dossiers purged for good, by (deletion, number) from `deletedSince`.
    async fn deleted_dossiers(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        deleted_since: Option<Iso8601DateTime>,
        order: Option<Order>,
    ) -> Result<DeletedDossierConnection> {
        let (page_info, rows) = list(
            ctx,
            self.number,
            Listing::Purged,
            PageArgs {
                first,
                after,
                since: deleted_since,
                order,
            },
            deleted_node,
        )?;
        Ok(deleted_connection(page_info, rows))
    }
}

fn deleted_connection(
    page_info: PageInfo,
    rows: Vec<(String, DeletedDossier)>,
) -> DeletedDossierConnection {
    let nodes = rows.iter().map(|r| r.1.clone()).collect();
    let edges = rows
        .into_iter()
        .map(|(cursor, node)| DeletedDossierEdge { cursor, node })
        .collect();
    DeletedDossierConnection {
        page_info,
        nodes,
        edges,
    }
}

/// `DeletedDossier`.
#[derive(SimpleObject, Clone, Debug)]
pub struct DeletedDossier {
    /// GraphQL id.
    id: String,
    /// Dossier number (the key to use).
    number: i64,
    /// State when deleted.
    state: DossierState,
    /// Why it was deleted.
    reason: String,
    /// When it was deleted (field name misspelt as in the real API).
    date_supression: Iso8601DateTime,
}

/// `Profile` (the user).
#[derive(SimpleObject, Clone, Debug)]
pub struct Profile {
    /// GraphQL id.
    id: ID,
    /// E-mail.
    email: String,
}

/// `Dossier`.
#[derive(Clone, Debug)]
pub struct Dossier(Arc<DossierData>);

#[Object]
impl Dossier {
    /// GraphQL id (`Dossier-<number>` in base64).
    async fn id(&self) -> ID {
        ID(graphql_id("Dossier", self.0.number))
    }

    /// Number.
    async fn number(&self) -> i32 {
        to_int(self.0.number)
    }

    /// State.
    async fn state(&self) -> DossierState {
        self.0.state.into()
    }

    /// Archived.
    async fn archived(&self) -> bool {
        self.0.archived
    }

    /// Deposit date.
    async fn date_depot(&self) -> Iso8601DateTime {
        Iso8601DateTime(self.0.depot_us)
    }

    /// Last modification date.
    async fn date_derniere_modification(&self) -> Iso8601DateTime {
        Iso8601DateTime(self.0.updated_us)
    }

    /// Passage en construction.
    async fn date_passage_en_construction(&self) -> Iso8601DateTime {
        Iso8601DateTime(self.0.depot_us)
    }

    /// Passage en instruction.
    async fn date_passage_en_instruction(&self) -> Option<Iso8601DateTime> {
        self.0.instruction_us.map(Iso8601DateTime)
    }

    /// Decision date.
    async fn date_traitement(&self) -> Option<Iso8601DateTime> {
        self.0.traitement_us.map(Iso8601DateTime)
    }

    /// Decision motivation.
    async fn motivation(&self) -> Option<String> {
        self.0.motivation.clone()
    }

    /// The user.
    async fn usager(&self) -> Profile {
        Profile {
            id: ID(graphql_id("User", self.0.number)),
            email: self.0.email.clone(),
        }
    }

    /// The applicant.
    async fn demandeur(&self) -> Demandeur {
        let id = ID(graphql_id("Individual", self.0.number));
        match &self.0.applicant {
            Applicant::Person {
                civilite,
                nom,
                prenom,
            } => Demandeur::PersonnePhysique(PersonnePhysique {
                id,
                civilite: civilite.map(|c| match c {
                    Civility::M => Civilite::M,
                    Civility::Mme => Civilite::Mme,
                }),
                nom: nom.clone(),
                prenom: prenom.clone(),
            }),
            Applicant::Company { siret } => Demandeur::PersonneMorale(PersonneMorale {
                id: ID(graphql_id("Etablissement", self.0.number)),
                siret: siret.clone(),
            }),
        }
    }

    /// The form's answers.
    async fn champs(&self) -> Vec<Champ> {
        self.0.champs.iter().map(champ).collect()
    }

    /// Private annotations (none in the simulator).
    async fn annotations(&self) -> Vec<Champ> {
        Vec::new()
    }
}

/// `Demandeur`.
#[derive(Interface)]
#[graphql(field(name = "id", ty = "&ID"))]
pub enum Demandeur {
    /// A natural person.
    PersonnePhysique(PersonnePhysique),
    /// A company.
    PersonneMorale(PersonneMorale),
}

/// `PersonnePhysique`.
#[derive(SimpleObject)]
pub struct PersonnePhysique {
    /// GraphQL id.
    id: ID,
    /// Civility.
    civilite: Option<Civilite>,
    /// Family name.
    nom: String,
    /// First name.
    prenom: String,
}

/// `PersonneMorale`.
#[derive(SimpleObject)]
pub struct PersonneMorale {
    /// GraphQL id.
    id: ID,
    /// SIRET.
    siret: String,
}

fn champ(c: &ChampData) -> Champ {
    let base = ChampBase {
        id: ID(graphql_id("Champ", c.descriptor)),
        label: c.label.to_string(),
    };
    match &c.value {
        ChampValue::Text(v) => Champ::TextChamp(TextChamp {
            base,
            value: v.clone(),
        }),
        ChampValue::Checkbox(v) => Champ::CheckboxChamp(CheckboxChamp { base, value: *v }),
        ChampValue::Integer(v) => Champ::IntegerNumberChamp(IntegerNumberChamp { base, value: *v }),
        ChampValue::Date(v) => Champ::DateChamp(DateChamp { base, date: *v }),
    }
}

/// Fields every champ has.
#[derive(Clone, Debug)]
pub struct ChampBase {
    id: ID,
    label: String,
}

/// `Champ`.
#[derive(Interface)]
#[graphql(
    field(name = "id", ty = "&ID"),
    field(name = "label", ty = "&String"),
    field(name = "string_value", ty = "Option<String>")
)]
pub enum Champ {
    /// Free text.
    TextChamp(TextChamp),
    /// Yes/no.
    CheckboxChamp(CheckboxChamp),
    /// Integer.
    IntegerNumberChamp(IntegerNumberChamp),
    /// Date.
    DateChamp(DateChamp),
}

/// `TextChamp`.
pub struct TextChamp {
    base: ChampBase,
    value: Option<String>,
}

#[Object]
impl TextChamp {
    /// GraphQL id.
    async fn id(&self) -> &ID {
        &self.base.id
    }
    /// Label.
    async fn label(&self) -> &String {
        &self.base.label
    }
    /// Text form.
    async fn string_value(&self) -> Option<String> {
        self.value.clone()
    }
    /// Value.
    async fn value(&self) -> Option<String> {
        self.value.clone()
    }
}

/// `CheckboxChamp`.
pub struct CheckboxChamp {
    base: ChampBase,
    value: bool,
}

#[Object]
impl CheckboxChamp {
    /// GraphQL id.
    async fn id(&self) -> &ID {
        &self.base.id
    }
    /// Label.
    async fn label(&self) -> &String {
        &self.base.label
    }
    /// Text form (`Oui`/`Non`).
    async fn string_value(&self) -> Option<String> {
        Some(if self.value { "Oui" } else { "Non" }.to_string())
    }
    /// Checked.
    async fn value(&self) -> bool {
        self.value
    }
}

/// `IntegerNumberChamp`.
pub struct IntegerNumberChamp {
    base: ChampBase,
    value: Option<i64>,
}

#[Object]
impl IntegerNumberChamp {
    /// GraphQL id.
    async fn id(&self) -> &ID {
        &self.base.id
    }
    /// Label.
    async fn label(&self) -> &String {
        &self.base.label
    }
    /// Text form.
    async fn string_value(&self) -> Option<String> {
        self.value.map(|v| v.to_string())
    }
    /// Value.
    async fn value(&self) -> Option<BigInt> {
        self.value.map(BigInt)
    }
}

/// `DateChamp`.
pub struct DateChamp {
    base: ChampBase,
    date: Option<chrono::NaiveDate>,
}

#[Object]
impl DateChamp {
    /// GraphQL id.
    async fn id(&self) -> &ID {
        &self.base.id
    }
    /// Label.
    async fn label(&self) -> &String {
        &self.base.label
    }
    /// Text form (`12 mai 2024`).
    async fn string_value(&self) -> Option<String> {
        self.date.map(french_date)
    }
    /// Date.
    async fn date(&self) -> Option<Iso8601Date> {
        self.date.map(Iso8601Date)
    }
}
