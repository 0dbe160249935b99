//! A fast path for the request synchro sends for every page after the first
//! (`getDemarche` of [`QUERY`]): the page is
//! listed from the store and each dossier's `DossierFields` are copied from
//! the text rendered when the dossier was stored ([`render_dossier`]),
//! instead of resolving every field of every dossier through the GraphQL
//! engine. The response is byte for byte what the engine answers (tests
//! compare both on the same requests); any other document, operation,
//! variable shape or anything that would make the engine answer an error
//! goes to the engine.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::codec::{Cursor, graphql_id};
use super::generate::french_date;
use super::schema::Scope;
use super::store::{
    Applicant, ChampValue, Civility, DossierData, Listing, PageQuery, State, Store,
};
use super::{QUERY, Shared};
use crate::text::push_str_literal;
use crate::time::{format_paris, parse_us};

/// The operation served here.
const OPERATION: &str = "getDemarche";

/// A GraphQL request body as this path reads it.
#[derive(Deserialize)]
struct Body {
    query: String,
    #[serde(rename = "operationName")]
    operation_name: Option<String>,
    #[serde(default)]
    variables: Option<serde_json::Map<String, Value>>,
}

/// The variables of `getDemarche`, validated as the engine would.
struct Variables {
    demarche: i64,
    first: Option<i64>,
    after: Option<String>,
    updated_since: Option<i64>,
}

/// An `Int` variable: a JSON integer within i32.
fn int(v: &Value) -> Option<i64> {
    v.as_i64().filter(|n| i32::try_from(*n).is_ok())
}

fn variables(vars: &serde_json::Map<String, Value>) -> Option<Variables> {
    const KNOWN: [&str; 4] = ["demarcheNumber", "first", "after", "updatedSince"];
    if vars.keys().any(|k| !KNOWN.contains(&k.as_str())) {
        return None;
    }
    let demarche = int(vars.get("demarcheNumber")?)?;
    let first = match vars.get("first") {
        None | Some(Value::Null) => None,
        Some(v) => Some(int(v)?),
    };
    let after = match vars.get("after") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return None,
    };
    let updated_since = match vars.get("updatedSince") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(parse_us(s)?),
        Some(_) => return None,
    };
    Some(Variables {
        demarche,
        first,
        after,
        updated_since,
    })
}

/// The engine's answer to `body`, when this path can give it; `None` sends
/// the request to the engine.
pub fn answer(shared: &Shared, scope: &Scope, body: &[u8]) -> Option<String> {
    let body: Body = serde_json::from_slice(body).ok()?;
    if body.operation_name.as_deref() != Some(OPERATION) || body.query != QUERY {
        return None;
    }
    let vars = variables(body.variables.as_ref()?)?;
    if !scope.allows(vars.demarche) {
        return None;
    }
    let first = match vars.first {
        None => 100,
        Some(n) if n < 0 => return None,
        Some(n) => usize::try_from(n).unwrap_or(100).min(100),
    };
    let after = match vars.after.as_deref() {
        None => None,
        Some(text) => Some(Cursor::decode(text)?),
    };
    let listing = if vars.updated_since.is_some() {
        Listing::ByUpdate
    } else {
        Listing::ByDepot
    };
    let store = shared.store();
    if !store.demarches.contains_key(&vars.demarche) {
        return None;
    }
    let page = store
        .page(
            vars.demarche,
            listing,
            PageQuery {
                since: vars.updated_since,
                after,
                desc: false,
                first,
            },
        )
        .ok()?;
    let nodes: Vec<((i64, i64), Arc<str>)> = page
        .rows
        .iter()
        .filter_map(|row| Some((*row, store.rendered(row.1)?)))
        .collect();
    drop(store);
    let end_cursor = nodes
        .last()
        .map(|(row, _)| Store::cursor(listing, *row).encode());
    let mut out = String::with_capacity(nodes.iter().map(|n| n.1.len() + 1).sum::<usize>() + 256);
    out.push_str("{\"data\":{\"demarche\":{\"number\":");
    out.push_str(&vars.demarche.to_string());
    out.push_str(",\"dossiers\":{\"pageInfo\":{\"hasNextPage\":");
    out.push_str(if page.has_next { "true" } else { "false" });
    out.push_str(",\"endCursor\":");
    match &end_cursor {
        Some(c) => push_str_literal(&mut out, c),
        None => out.push_str("null"),
    }
    out.push_str("},\"nodes\":[");
    for (i, (_, node)) in nodes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(node);
    }
    out.push_str("]}}}}");
    Some(out)
}

fn field(out: &mut String, first: bool, name: &str) {
    if !first {
        out.push(',');
    }
    out.push('"');
    out.push_str(name);
    out.push_str("\":");
}

fn string_or_null(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => push_str_literal(out, s),
        None => out.push_str("null"),
    }
}

fn state_name(s: State) -> &'static str {
    match s {
        State::EnConstruction => "en_construction",
        State::EnInstruction => "en_instruction",
        State::Accepte => "accepte",
        State::Refuse => "refuse",
        State::SansSuite => "sans_suite",
    }
}

/// A dossier's `DossierFields` (the fragment of synchro's query) as the
/// engine renders them: fields in the fragment's order, dates in Paris time.
pub fn render_dossier(d: &DossierData) -> String {
    let number = i32::try_from(d.number).unwrap_or(i32::MAX);
    let date = |us: i64| format_paris(us);
    let mut out = String::with_capacity(1200);
    out.push('{');
    field(&mut out, true, "id");
    push_str_literal(&mut out, &graphql_id("Dossier", d.number));
    field(&mut out, false, "number");
    out.push_str(&number.to_string());
    field(&mut out, false, "state");
    push_str_literal(&mut out, state_name(d.state));
    field(&mut out, false, "archived");
    out.push_str(if d.archived { "true" } else { "false" });
    field(&mut out, false, "dateDepot");
    push_str_literal(&mut out, &date(d.depot_us));
    field(&mut out, false, "dateDerniereModification");
    push_str_literal(&mut out, &date(d.updated_us));
    field(&mut out, false, "datePassageEnConstruction");
    push_str_literal(&mut out, &date(d.depot_us));
    field(&mut out, false, "datePassageEnInstruction");
    string_or_null(&mut out, d.instruction_us.map(date).as_deref());
    field(&mut out, false, "dateTraitement");
    string_or_null(&mut out, d.traitement_us.map(date).as_deref());
    field(&mut out, false, "motivation");
    string_or_null(&mut out, d.motivation.as_deref());
    field(&mut out, false, "usager");
    out.push('{');
    field(&mut out, true, "email");
    push_str_literal(&mut out, &d.email);
    out.push('}');
    field(&mut out, false, "demandeur");
    out.push('{');
    match &d.applicant {
        Applicant::Person {
            civilite,
            nom,
            prenom,
        } => {
            field(&mut out, true, "__typename");
            out.push_str("\"PersonnePhysique\"");
            field(&mut out, false, "civilite");
            string_or_null(
                &mut out,
                civilite.map(|c| match c {
                    Civility::M => "M",
                    Civility::Mme => "Mme",
                }),
            );
            field(&mut out, false, "nom");
            push_str_literal(&mut out, nom);
            field(&mut out, false, "prenom");
            push_str_literal(&mut out, prenom);
        }
        Applicant::Company { siret } => {
            field(&mut out, true, "__typename");
            out.push_str("\"PersonneMorale\"");
            field(&mut out, false, "siret");
            push_str_literal(&mut out, siret);
        }
    }
    out.push('}');
    field(&mut out, false, "champs");
    out.push('[');
    for (i, c) in d.champs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let typename = match c.value {
            ChampValue::Text(_) => "TextChamp",
            ChampValue::Checkbox(_) => "CheckboxChamp",
            ChampValue::Integer(_) => "IntegerNumberChamp",
            ChampValue::Date(_) => "DateChamp",
        };
        out.push('{');
        field(&mut out, true, "__typename");
        push_str_literal(&mut out, typename);
        field(&mut out, false, "id");
        push_str_literal(&mut out, &graphql_id("Champ", c.descriptor));
        field(&mut out, false, "label");
        push_str_literal(&mut out, c.label);
        field(&mut out, false, "stringValue");
        match &c.value {
            ChampValue::Text(v) => string_or_null(&mut out, v.as_deref()),
            ChampValue::Checkbox(v) => {
                push_str_literal(&mut out, if *v { "Oui" } else { "Non" });
                field(&mut out, false, "checked");
                out.push_str(if *v { "true" } else { "false" });
            }
            ChampValue::Integer(v) => {
                let text = v.map(|n| n.to_string());
                string_or_null(&mut out, text.as_deref());
                field(&mut out, false, "integerNumber");
                string_or_null(&mut out, text.as_deref());
            }
            ChampValue::Date(v) => {
                string_or_null(&mut out, v.map(french_date).as_deref());
                field(&mut out, false, "date");
                let iso = v.map(|d| d.format("%Y-%m-%d").to_string());
                string_or_null(&mut out, iso.as_deref());
            }
        }
        out.push('}');
    }
    out.push(']');
    out.push('}');
    out
}
