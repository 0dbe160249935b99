//! `TENANT/SOURCE_ID` arguments: parsing, checking them against what a
//! command accepts, and an error for an unknown one that stays short with
//! ten thousand sources (the few closest names and a count, not all).

use crate::config::Config;
use crate::model::SourceKey;

use super::CliError;

/// How many names an unknown-source error suggests.
const SUGGESTED: usize = 5;

/// Resolves `TENANT/SOURCE_ID` arguments against the config (all if empty).
/// An unknown or malformed name is a usage error (exit 2).
pub(crate) fn select_sources(
    config: &Config,
    names: &[String],
) -> Result<Vec<SourceKey>, CliError> {
    if names.is_empty() {
        return Ok(config.sources().map(|s| s.key()).collect());
    }
    let configured: Vec<SourceKey> = config.sources().map(|s| s.key()).collect();
    select_among(names, &configured, "configured")
}

/// Parses `names` and checks each against `known` (deduplicated, in the
/// order given). `what` names the set in the error: "configured",
/// "stored"...
pub(crate) fn select_among(
    names: &[String],
    known: &[SourceKey],
    what: &str,
) -> Result<Vec<SourceKey>, CliError> {
    let mut keys = Vec::with_capacity(names.len());
    for name in names {
        let key = parse(name)?;
        if !known.contains(&key) {
            return Err(unknown_source(&key, known, what));
        }
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    Ok(keys)
}

/// `TENANT/SOURCE_ID` → key; anything else is a usage error.
pub(crate) fn parse(name: &str) -> Result<SourceKey, CliError> {
    SourceKey::parse(name).ok_or_else(|| {
        CliError::Usage(format!(
            "{name:?} is not a source name: expected TENANT/SOURCE_ID"
        ))
    })
}

/// "unknown source X (configured: the closest few, … and N more)".
pub(crate) fn unknown_source(key: &SourceKey, known: &[SourceKey], what: &str) -> CliError {
    if known.is_empty() {
        return CliError::Usage(format!("unknown source {key} ({what}: none)"));
    }
    let wanted = key.to_string();
    let shown = closest(&wanted, known, SUGGESTED);
    let mut list = shown.join(", ");
    if known.len() > shown.len() {
        list.push_str(&format!(
            ", … and {} more",
            thousands(known.len() - shown.len())
        ));
    }
    let label = if known.len() > shown.len() {
        format!("{what}, closest first")
    } else {
        what.to_string()
    };
    CliError::Usage(format!("unknown source {key} ({label}: {list})"))
}

/// The `n` names of `known` closest to `wanted` by edit distance (ties in
/// name order).
fn closest(wanted: &str, known: &[SourceKey], n: usize) -> Vec<String> {
    let wanted: Vec<char> = wanted.chars().collect();
    let mut best: Vec<(usize, String)> = Vec::with_capacity(n + 1);
    for key in known {
        let name = key.to_string();
        // Only a name closer than the current n-th one can enter the list.
        let bound = if best.len() < n {
            usize::MAX
        } else {
            best[best.len() - 1].0
        };
        let Some(d) = distance_within(&wanted, &name, bound) else {
            continue;
        };
        let at = best.partition_point(|(bd, bn)| (*bd, bn.as_str()) <= (d, name.as_str()));
        if at < n {
            best.insert(at, (d, name));
            best.truncate(n);
        }
    }
    best.into_iter().map(|(_, name)| name).collect()
}

/// Levenshtein distance between `a` and `b` if it is at most `bound`
/// (stops as soon as it cannot be: with ten thousand names, most are
/// dismissed after a row or two).
fn distance_within(a: &[char], b: &str, bound: usize) -> Option<usize> {
    let b: Vec<char> = b.chars().collect();
    if a.len().abs_diff(b.len()) > bound {
        return None;
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut row = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            row[j + 1] = substitute.min(prev[j + 1] + 1).min(row[j] + 1);
        }
        if row.iter().min().is_some_and(|m| *m > bound) {
            return None;
        }
        std::mem::swap(&mut prev, &mut row);
    }
    Some(prev[b.len()]).filter(|d| *d <= bound)
}

/// 9995 → "9,995".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(names: &[&str]) -> Vec<SourceKey> {
        names
            .iter()
            .map(|n| SourceKey::parse(n).expect("name"))
            .collect()
    }

    #[test]
    fn ten_thousand_sources_give_a_short_error_with_the_closest_names_first() {
        let mut toml = String::new();
        for t in 0..100 {
            toml.push_str(&format!("[[tenants]]\nid = \"tenant{t:03}\"\n"));
            for s in 0..100 {
                toml.push_str(&format!(
                    "[[tenants.sources]]\nid = \"permits{s:03}\"\nkind = \"content\"\n\
                     schedule = \"every 1h\"\ntoken = \"literal\"\n"
                ));
            }
        }
        let config = crate::config::load_str(
            &toml,
            std::path::Path::new("t.toml"),
            &Default::default(),
            &crate::sources::Kinds::builtin(),
        )
        .expect("config");
        let started = std::time::Instant::now();
        let e = select_sources(&config, &["tenant042/permit17".into()]).expect_err("unknown");
        let elapsed = started.elapsed();
        let text = e.to_string();
        assert!(matches!(e, CliError::Usage(_)));
        assert!(text.len() < 300, "{} bytes: {text}", text.len());
        assert!(
            text.starts_with(
                "unknown source tenant042/permit17 (configured, closest first: \
                 tenant042/permits017, "
            ),
            "{text}"
        );
        assert!(text.ends_with(", … and 9,995 more)"), "{text}");
        assert_eq!(text.matches("tenant").count(), 6, "{text}");
        assert!(elapsed < std::time::Duration::from_secs(2), "{elapsed:?}");
    }

    #[test]
    fn a_few_sources_are_all_listed_and_none_is_said() {
        let e = unknown_source(
            &SourceKey::new("a", "x"),
            &keys(&["b/y", "a/y", "a/x2"]),
            "configured",
        );
        assert_eq!(
            e.to_string(),
            "unknown source a/x (configured: a/x2, a/y, b/y)"
        );
        let e = unknown_source(&SourceKey::new("a", "x"), &[], "stored");
        assert_eq!(e.to_string(), "unknown source a/x (stored: none)");
    }

    #[test]
    fn names_are_parsed_checked_and_deduplicated() {
        let known = keys(&["a/x", "a/y"]);
        let got = select_among(&["a/y".into(), "a/x".into(), "a/y".into()], &known, "known")
            .expect("known");
        assert_eq!(got, keys(&["a/y", "a/x"]));
        let e = select_among(&["a".into()], &known, "known").expect_err("malformed");
        assert!(e.to_string().contains("expected TENANT/SOURCE_ID"), "{e}");
    }

    #[test]
    fn distances_and_counts() {
        let d = |a: &str, b: &str, bound| distance_within(&a.chars().collect::<Vec<_>>(), b, bound);
        assert_eq!(d("kitten", "sitting", 10), Some(3));
        assert_eq!(d("kitten", "sitting", 2), None);
        assert_eq!(d("", "abc", 3), Some(3));
        assert_eq!(d("same", "same", 0), Some(0));
        assert_eq!(thousands(5), "5");
        assert_eq!(thousands(9_995), "9,995");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
