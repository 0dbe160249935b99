//! Realistic-looking seeded requests: translations of product pages and
//! copywriting briefs, in a handful of languages, with mixed states.

use rand::Rng;
use rand::rngs::StdRng;
use serde_json::Value;

use super::store::{COMPLETED, ContentRequest, Field};

const HOUR_MS: i64 = 3_600_000;

/// (English, Swedish, German, French) texts.
const TEXTS: &[[&str; 4]] = &[
    [
        "Oak dining table",
        "Matbord i ek",
        "Esstisch aus Eiche",
        "Table à manger en chêne",
    ],
    [
        "Free delivery on orders over 50 euros.",
        "Fri frakt vid köp över 50 euro.",
        "Kostenlose Lieferung ab 50 Euro.",
        "Livraison gratuite dès 50 euros d'achat.",
    ],
    [
        "Handmade from sustainably sourced wood.",
        "Handgjord av hållbart odlat trä.",
        "Handgefertigt aus nachhaltig gewonnenem Holz.",
        "Fabriqué à la main en bois issu de forêts durables.",
    ],
    [
        "Our summer collection is here",
        "Vår sommarkollektion är här",
        "Unsere Sommerkollektion ist da",
        "Notre collection d'été est arrivée",
    ],
    [
        "Return within 30 days, no questions asked.",
        "Öppet köp i 30 dagar.",
        "30 Tage Rückgaberecht ohne Angabe von Gründen.",
        "Retour sous 30 jours, sans justification.",
    ],
    [
        "Linen bedding set",
        "Sängkläder i linne",
        "Bettwäsche-Set aus Leinen",
        "Parure de lit en lin",
    ],
];
const LANGUAGES: &[&str] = &["en", "sv", "de", "fr"];
const PRODUCTS: &[&str] = &[
    "wool blanket",
    "ceramic vase",
    "standing desk",
    "trail running shoes",
    "espresso machine",
    "rain jacket",
];
const TRANSLATION_FIELDS: &[&str] = &["title", "description", "meta_description"];
const COPY_FIELDS: &[&str] = &["product_text", "seo_title"];

/// A new request in a state drawn at random (about 40 % completed),
/// changed at `at` (ms) and created up to 3 days before.
pub fn request(
    rng: &mut StdRng,
    id: i64,
    batch_id: i64,
    source: &'static str,
    at: i64,
) -> ContentRequest {
    let state = match rng.random_range(0..100) {
        0..40 => COMPLETED,
        40..60 => "confirmed",
        60..80 => "pending",
        80..92 => "canceled",
        _ => "failed",
    };
    let created_ms = if state == "pending" {
        at
    } else {
        at - rng.random_range(0..72 * HOUR_MS)
    };
    let translation = rng.random_bool(0.7);
    let (kind, language, fields) = if translation {
        let lang = rng.random_range(1..LANGUAGES.len());
        let fields = TRANSLATION_FIELDS
            .iter()
            .map(|name| Field {
                name,
                original: TEXTS[rng.random_range(0..TEXTS.len())][0].to_string(),
                value: None,
            })
            .collect();
        ("translation", LANGUAGES[lang], fields)
    } else {
        let product = PRODUCTS[rng.random_range(0..PRODUCTS.len())];
        let fields = COPY_FIELDS
            .iter()
            .map(|name| Field {
                name,
                original: format!(
                    "Write a {} for our {product}, friendly tone.",
                    name.replace('_', " ")
                ),
                value: None,
            })
            .collect();
        ("copywriting", "en", fields)
    };
    let mut r = ContentRequest {
        id,
        batch_id,
        kind,
        source,
        state: state.to_string(),
        created_ms,
        completed_ms: None,
        last_state_change_ms: at,
        language,
        fields,
        completions: 0,
        import_response: Value::Null,
        corrupt: false,
        rendered: Default::default(),
    };
    if state == COMPLETED {
        r.completed_ms = Some(at);
        r.completions = 1;
        fill_values(&mut r);
    }
    r
}

/// Gives every field its delivered text; a later completion delivers a
/// revised text.
pub fn fill_values(r: &mut ContentRequest) {
    let lang = LANGUAGES.iter().position(|l| *l == r.language).unwrap_or(0);
    let revision = if r.completions > 1 {
        format!(" (rev. {})", r.completions)
    } else {
        String::new()
    };
    for f in &mut r.fields {
        let text = if r.kind == "translation" {
            TEXTS
                .iter()
                .find(|t| t[0] == f.original)
                .map_or_else(|| f.original.clone(), |t| t[lang].to_string())
        } else {
            let product = PRODUCTS
                .iter()
                .find(|p| f.original.contains(*p))
                .unwrap_or(&"product");
            format!("Meet the {product} you will keep for years: built to last, easy to love.")
        };
        f.value = Some(format!("{text}{revision}"));
    }
}
