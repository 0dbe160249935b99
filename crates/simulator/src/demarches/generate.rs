//! Realistic-looking seeded content: French names, e-mails, SIRETs, states
//! and form answers.

use chrono::{Days, NaiveDate};
use rand::Rng;
use rand::rngs::StdRng;

use super::store::{Applicant, ChampData, ChampValue, Civility, DossierData, State};

const PRENOMS_F: &[&str] = &[
    "Camille",
    "Léa",
    "Manon",
    "Chloé",
    "Inès",
    "Sarah",
    "Julie",
    "Emma",
    "Louise",
    "Hélène",
    "Zoé",
    "Anaïs",
    "Clémence",
    "Margaux",
    "Élodie",
];
const PRENOMS_M: &[&str] = &[
    "Lucas",
    "Hugo",
    "Thomas",
    "Nicolas",
    "Julien",
    "Mathéo",
    "Antoine",
    "Maxime",
    "Théo",
    "Raphaël",
    "Jérôme",
    "François",
    "Baptiste",
    "Cédric",
    "Loïc",
];
const NOMS: &[&str] = &[
    "Martin",
    "Bernard",
    "Dubois",
    "Thomas",
    "Robert",
    "Richard",
    "Petit",
    "Durand",
    "Leroy",
    "Moreau",
    "Simon",
    "Laurent",
    "Lefèvre",
    "Michel",
    "Garcia",
    "David",
    "Bertrand",
    "Roux",
    "Vincent",
    "Fournier",
    "Morel",
    "Girard",
    "André",
    "Lefebvre",
    "Mercier",
    "Dupont",
    "Lambert",
    "Bonnet",
    "François",
    "Martinez",
];
const DOMAINES: &[&str] = &[
    "gmail.com",
    "orange.fr",
    "free.fr",
    "laposte.net",
    "yahoo.fr",
    "sfr.fr",
    "outlook.fr",
];
const STRUCTURES: &[&str] = &[
    "asso-les-jardins",
    "boulangerie-dupont",
    "sarl-batiplus",
    "club-sportif-lyon",
    "mairie-saint-andre",
    "coop-bio-ouest",
    "atelier-numerique",
];
const OBJETS: &[&str] = &[
    "Demande de subvention pour un projet associatif",
    "Aménagement d'un jardin partagé",
    "Organisation d'une fête de quartier",
    "Rénovation énergétique d'un bâtiment",
    "Achat de matériel informatique",
    "Création d'une activité périscolaire",
    "Festival de musique en plein air",
    "Formation des bénévoles",
];
const COMMUNES: &[&str] = &[
    "Paris",
    "Lyon",
    "Marseille",
    "Toulouse",
    "Nantes",
    "Strasbourg",
    "Montpellier",
    "Bordeaux",
    "Lille",
    "Rennes",
    "Saint-Étienne",
    "Besançon",
    "Orléans",
    "Châlons-en-Champagne",
];
const TITRES: &[&str] = &[
    "Demande de subvention",
    "Appel à projets vie associative",
    "Autorisation d'occupation du domaine public",
    "Aide à la rénovation énergétique",
    "Déclaration de manifestation sportive",
];
const MOTIVATIONS: &[&str] = &[
    "Dossier complet et conforme au règlement.",
    "Le projet ne répond pas aux critères d'éligibilité.",
    "Pièces justificatives manquantes malgré relance.",
    "Budget prévisionnel insuffisamment détaillé.",
];

/// Labels and stable ids of the form every démarche uses.
const TEXT_OBJET: (i64, &str) = (101, "Objet de la demande");
const TEXT_COMMUNE: (i64, &str) = (102, "Commune du projet");
const CHECKBOX: (i64, &str) = (103, "J'atteste sur l'honneur l'exactitude des informations");
const INTEGER: (i64, &str) = (104, "Nombre de bénéficiaires");
const DATE: (i64, &str) = (105, "Date de début du projet");

fn pick<'a>(rng: &mut StdRng, list: &[&'a str]) -> &'a str {
    list[rng.random_range(0..list.len())]
}

/// The title of a démarche, from its number.
pub fn title(demarche: i64) -> String {
    let i = usize::try_from(demarche.rem_euclid(TITRES.len() as i64)).unwrap_or(0);
    format!("{} (n° {demarche})", TITRES[i])
}

/// Lower-case ASCII form of a name, for e-mail addresses.
fn ascii(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'à' | 'â' | 'ä' => 'a',
            'é' | 'è' | 'ê' | 'ë' | 'É' => 'e',
            'î' | 'ï' => 'i',
            'ô' | 'ö' => 'o',
            'ù' | 'û' | 'ü' => 'u',
            'ç' => 'c',
            ' ' | '\'' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// A SIRET with a valid Luhn checksum.
fn siret(rng: &mut StdRng) -> String {
    let mut digits: Vec<u32> = (0..13).map(|_| rng.random_range(0..10)).collect();
    digits[0] = rng.random_range(1..10);
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                *d
            }
        })
        .sum();
    digits.push((10 - sum % 10) % 10);
    digits.iter().map(|d| char::from(b'0' + *d as u8)).collect()
}

fn applicant(rng: &mut StdRng) -> (Applicant, String) {
    if rng.random_bool(0.8) {
        let female = rng.random_bool(0.5);
        let prenom = pick(rng, if female { PRENOMS_F } else { PRENOMS_M });
        let nom = pick(rng, NOMS);
        let email = format!(
            "{}.{}{}@{}",
            ascii(prenom),
            ascii(nom),
            rng.random_range(1..100),
            pick(rng, DOMAINES)
        );
        let civilite = if rng.random_bool(0.95) {
            Some(if female { Civility::Mme } else { Civility::M })
        } else {
            None
        };
        let applicant = Applicant::Person {
            civilite,
            nom: nom.to_uppercase(),
            prenom: prenom.to_string(),
        };
        (applicant, email)
    } else {
        let email = format!("contact@{}.fr", pick(rng, STRUCTURES));
        (Applicant::Company { siret: siret(rng) }, email)
    }
}

fn champs(rng: &mut StdRng, around_us: i64) -> Vec<ChampData> {
    let base = chrono::DateTime::from_timestamp_micros(around_us)
        .map(|d| d.date_naive())
        .unwrap_or_default();
    let date = if rng.random_bool(0.9) {
        base.checked_add_days(Days::new(rng.random_range(10..200)))
    } else {
        None
    };
    vec![
        ChampData {
            descriptor: TEXT_OBJET.0,
            label: TEXT_OBJET.1,
            value: ChampValue::Text(Some(pick(rng, OBJETS).to_string())),
        },
        ChampData {
            descriptor: TEXT_COMMUNE.0,
            label: TEXT_COMMUNE.1,
            value: ChampValue::Text(
                rng.random_bool(0.9)
                    .then(|| pick(rng, COMMUNES).to_string()),
            ),
        },
        ChampData {
            descriptor: CHECKBOX.0,
            label: CHECKBOX.1,
            value: ChampValue::Checkbox(rng.random_bool(0.85)),
        },
        ChampData {
            descriptor: INTEGER.0,
            label: INTEGER.1,
            value: ChampValue::Integer(rng.random_bool(0.9).then(|| rng.random_range(1..500))),
        },
        ChampData {
            descriptor: DATE.0,
            label: DATE.1,
            value: ChampValue::Date(date),
        },
    ]
}

/// A brand-new dossier, deposited at `now_us`.
pub fn fresh(rng: &mut StdRng, number: i64, demarche: i64, now_us: i64) -> DossierData {
    let (applicant, email) = applicant(rng);
    DossierData {
        number,
        demarche,
        state: State::EnConstruction,
        archived: false,
        depot_us: now_us,
        updated_us: now_us,
        instruction_us: None,
        traitement_us: None,
        motivation: None,
        email,
        applicant,
        champs: champs(rng, now_us),
        revision: 0,
    }
}

/// A dossier last modified at `updated_us`, in any state, with a history
/// consistent with it (deposit ≤ instruction ≤ decision ≤ modification).
pub fn dossier(rng: &mut StdRng, number: i64, demarche: i64, updated_us: i64) -> DossierData {
    let mut d = fresh(rng, number, demarche, updated_us);
    let age = rng.random_range(60_000_000..30 * 86_400_000_000_i64);
    d.depot_us = updated_us - age;
    let state = match rng.random_range(0..100) {
        0..35 => State::EnConstruction,
        35..65 => State::EnInstruction,
        65..85 => State::Accepte,
        85..95 => State::Refuse,
        _ => State::SansSuite,
    };
    if state != State::EnConstruction {
        let instruction = d.depot_us + rng.random_range(0..=age / 2);
        d.instruction_us = Some(instruction);
        if state.is_terminal() {
            d.traitement_us = Some(instruction + rng.random_range(0..=(updated_us - instruction)));
            if state != State::Accepte || rng.random_bool(0.3) {
                d.motivation = Some(pick(rng, MOTIVATIONS).to_string());
            }
            d.archived = rng.random_bool(0.2);
        }
    }
    d.state = state;
    d
}

/// Applies one realistic modification at `now_us`: edits the object text,
/// and often moves the dossier one step forward in its life cycle.
pub fn modify(rng: &mut StdRng, d: &mut DossierData, now_us: i64) {
    d.revision += 1;
    let revision = d.revision;
    for champ in &mut d.champs {
        match (&mut champ.value, champ.descriptor) {
            (ChampValue::Text(v), id) if id == TEXT_OBJET.0 => {
                *v = Some(format!("{} (version {})", pick(rng, OBJETS), revision + 1));
            }
            (ChampValue::Integer(v), _) if rng.random_bool(0.3) => {
                *v = Some(rng.random_range(1..500));
            }
            (ChampValue::Checkbox(v), _) if rng.random_bool(0.2) => *v = !*v,
            _ => {}
        }
    }
    if !rng.random_bool(0.5) {
        return;
    }
    match d.state {
        State::EnConstruction => {
            d.state = State::EnInstruction;
            d.instruction_us = Some(now_us);
        }
        State::EnInstruction => {
            d.state = match rng.random_range(0..10) {
                0..7 => State::Accepte,
                7..9 => State::Refuse,
                _ => State::SansSuite,
            };
            d.traitement_us = Some(now_us);
            if d.state != State::Accepte {
                d.motivation = Some(pick(rng, MOTIVATIONS).to_string());
            }
        }
        _ => d.archived = !d.archived,
    }
}

/// How the platform writes a date in `stringValue` (`12 mai 2024`).
pub fn french_date(date: NaiveDate) -> String {
    use chrono::Datelike;
    const MOIS: [&str; 12] = [
        "janvier",
        "février",
        "mars",
        "avril",
        "mai",
        "juin",
        "juillet",
        "août",
        "septembre",
        "octobre",
        "novembre",
        "décembre",
    ];
    let m = MOIS[usize::try_from(date.month0()).unwrap_or(0) % 12];
    format!("{} {m} {}", date.day(), date.year())
}
