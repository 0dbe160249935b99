//! Schedules: `every <duration>` or a cron expression (5 or 6 fields, UTC).

use std::fmt;
use std::time::Duration;

/// When a source runs. Cron expressions are normalised to the 6-field form
/// (leading seconds) that tokio-cron-scheduler expects.
#[derive(Clone, PartialEq, Eq)]
pub enum Schedule {
    Every(Duration),
    Cron(String),
}

impl Schedule {
    /// Parses the user form; the error says what was expected.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("every ") {
            let d = humantime::parse_duration(rest.trim())
                .map_err(|e| format!("bad duration {:?} in {:?}: {e}", rest.trim(), s))?;
            if d < Duration::from_secs(1) {
                return Err(format!("{s:?}: the interval must be at least 1s"));
            }
            return Ok(Schedule::Every(d));
        }
        let fields = s.split_whitespace().count();
        let six = match fields {
            5 => format!("0 {s}"),
            6 => s.to_string(),
            _ => {
                return Err(format!(
                    "{s:?} is neither \"every <duration>\" nor a cron expression of 5 or 6 fields"
                ));
            }
        };
        croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Required)
            .build()
            .parse(&six)
            .map_err(|e| format!("bad cron expression {s:?}: {e}"))?;
        Ok(Schedule::Cron(six))
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every(d) => write!(f, "every {}", humantime::format_duration(*d)),
            Schedule::Cron(c) => write!(f, "cron {c}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_and_both_cron_forms() {
        assert_eq!(
            Schedule::parse("every 5m").unwrap(),
            Schedule::Every(Duration::from_secs(300))
        );
        assert_eq!(
            Schedule::parse("*/5 * * * *").unwrap(),
            Schedule::Cron("0 */5 * * * *".into())
        );
        assert_eq!(
            Schedule::parse("30 0 3 * * *").unwrap(),
            Schedule::Cron("30 0 3 * * *".into())
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(Schedule::parse("every banana").is_err());
        assert!(Schedule::parse("61 * * * *").is_err());
        assert!(Schedule::parse("sometimes").is_err());
        assert!(Schedule::parse("every 0s").is_err());
    }
}
