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

/// Product descriptions (English, Swedish, German, French), the longest
/// field of a translation, as on a real product page: with them a request is
/// about 1 KB of JSON, the record size issue 7's ingest benchmark is set at.
const DESCRIPTIONS: &[[&str; 4]] = &[
    [
        "Solid oak table with a natural oil finish that brings out the grain. Seats six comfortably and extends to eight with the included leaf. Assembly takes about twenty minutes with the tools in the box.",
        "Massivt ekbord med naturlig oljefinish som lyfter fram ådringen. Rymmer sex personer bekvämt och kan förlängas till åtta med den medföljande iläggsskivan. Monteringen tar ungefär tjugo minuter med verktygen i kartongen.",
        "Massiver Eichentisch mit natürlicher Ölbehandlung, die die Maserung betont. Bietet bequem Platz für sechs Personen und lässt sich mit der beiliegenden Einlegeplatte auf acht erweitern. Der Aufbau dauert etwa zwanzig Minuten mit dem mitgelieferten Werkzeug.",
        "Table en chêne massif avec une finition à l'huile naturelle qui révèle le veinage. Accueille confortablement six personnes et s'agrandit à huit grâce à l'allonge fournie. Le montage prend environ vingt minutes avec les outils inclus.",
    ],
    [
        "Stonewashed linen that gets softer with every wash. The set includes one duvet cover and two pillowcases with hidden button closures. Breathable in summer and warm in winter, made in Portugal.",
        "Stentvättat linne som blir mjukare för varje tvätt. Setet består av ett påslakan och två örngott med dold knappstängning. Andas på sommaren och värmer på vintern, tillverkat i Portugal.",
        "Stonewashed-Leinen, das mit jeder Wäsche weicher wird. Das Set enthält einen Bettbezug und zwei Kissenbezüge mit verdeckter Knopfleiste. Atmungsaktiv im Sommer und wärmend im Winter, hergestellt in Portugal.",
        "Lin lavé à la pierre qui s'adoucit à chaque lavage. La parure comprend une housse de couette et deux taies d'oreiller à boutons dissimulés. Respirant en été et chaud en hiver, fabriqué au Portugal.",
    ],
    [
        "A compact espresso machine with a fifteen bar pump and a steam wand for milk drinks. Heats up in under a minute and switches itself off after half an hour. The water tank lifts out for easy refilling.",
        "En kompakt espressomaskin med pump på femton bar och ångrör för mjölkdrycker. Värms upp på under en minut och stänger av sig själv efter en halvtimme. Vattentanken kan lyftas ur för enkel påfyllning.",
        "Eine kompakte Espressomaschine mit Fünfzehn-Bar-Pumpe und Dampflanze für Milchgetränke. Heizt in weniger als einer Minute auf und schaltet sich nach einer halben Stunde selbst ab. Der Wassertank lässt sich zum Nachfüllen abnehmen.",
        "Une machine à espresso compacte avec une pompe de quinze bars et une buse vapeur pour les boissons lactées. Chauffe en moins d'une minute et s'éteint seule après une demi-heure. Le réservoir se retire pour un remplissage facile.",
    ],
];

/// Material and care notes (English, Swedish, German, French), the second
/// paragraph of a product page.
const DETAILS: &[[&str; 4]] = &[
    [
        "Wipe with a damp cloth and dry straight away. Avoid direct sunlight for the first weeks while the oil cures, and treat the surface again once a year.",
        "Torka av med en fuktig trasa och torka direkt. Undvik direkt solljus de första veckorna medan oljan härdar, och behandla ytan igen en gång om året.",
        "Mit einem feuchten Tuch abwischen und sofort trocknen. In den ersten Wochen, während das Öl aushärtet, direkte Sonne vermeiden und die Oberfläche einmal im Jahr nachbehandeln.",
        "Essuyer avec un chiffon humide puis sécher aussitôt. Éviter le soleil direct les premières semaines pendant que l'huile durcit, et traiter la surface une fois par an.",
    ],
    [
        "Machine wash at forty degrees with similar colours. Tumble dry on low heat or line dry, and iron while still slightly damp for a crisp finish.",
        "Maskintvätt i fyrtio grader med liknande färger. Torktumla på låg värme eller hängtorka, och stryk medan tyget fortfarande är lite fuktigt.",
        "Maschinenwäsche bei vierzig Grad mit ähnlichen Farben. Bei niedriger Temperatur im Trockner oder an der Leine trocknen und leicht feucht bügeln.",
        "Lavage en machine à quarante degrés avec des couleurs similaires. Séchage en tambour à basse température ou à l'air libre, repasser encore légèrement humide.",
    ],
    [
        "Descale every two months with the supplied solution. The drip tray and the portafilter are dishwasher safe; the body should only be wiped clean.",
        "Avkalka varannan månad med det medföljande medlet. Droppbrickan och filterhållaren tål diskmaskin; själva maskinen ska bara torkas av.",
        "Alle zwei Monate mit dem beiliegenden Mittel entkalken. Abtropfschale und Siebträger sind spülmaschinenfest; das Gehäuse nur feucht abwischen.",
        "Détartrer tous les deux mois avec la solution fournie. Le bac d'égouttage et le porte-filtre passent au lave-vaisselle ; le corps se nettoie seulement avec un chiffon.",
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
const TRANSLATION_FIELDS: &[&str] = &["title", "description", "details", "meta_description"];
const COPY_FIELDS: &[&str] = &["product_text", "seo_title"];

/// The texts a translation field is drawn from, and translated with.
fn translations(field: &str) -> &'static [[&'static str; 4]] {
    match field {
        "description" => DESCRIPTIONS,
        "details" => DETAILS,
        _ => TEXTS,
    }
}

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
            .map(|name| {
                let texts = translations(name);
                Field {
                    name,
                    original: texts[rng.random_range(0..texts.len())][0].to_string(),
                    value: None,
                }
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
                    "Write a {} for our {product}, friendly tone. Mention what it is made of, \
                     who it is for and one detail that sets it apart; no superlatives.",
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
            translations(f.name)
                .iter()
                .find(|t| t[0] == f.original)
                .map_or_else(|| f.original.clone(), |t| t[lang].to_string())
        } else {
            let product = PRODUCTS
                .iter()
                .find(|p| f.original.contains(*p))
                .unwrap_or(&"product");
            format!(
                "Meet the {product} you will keep for years: built to last, easy to love, \
                 and made from materials chosen to age well."
            )
        };
        f.value = Some(format!("{text}{revision}"));
    }
}
