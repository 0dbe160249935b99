//! Schedules: `every <duration>` or a cron expression (5 or 6 fields, UTC).
//!
//! The one parser of the grammar: the config loader calls
//! [`Schedule::parse`] and reports its error under the `schedule` key; the
//! scheduler takes the typed result (the interval, or the parsed cron
//! expression) as it is.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// When a source runs.
#[derive(Clone, PartialEq, Eq)]
pub enum Schedule {
    /// A run every interval (at least one second).
    Every(Duration),
    /// A run at each occurrence of a cron expression.
    Cron(CronSchedule),
}

/// Why a schedule string was refused. The messages name the expected form
/// without quoting the value (the config error names the key).
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// `every` followed by something that is not a duration.
    #[error("\"every <duration>\": {}", super::reader::duration_error(.0))]
    Duration(humantime::DurationError),
    /// `every` with an interval under a second.
    #[error("\"every <duration>\": the interval must be at least 1s")]
    TooShort,
    /// Neither `every …` nor 5 or 6 fields.
    #[error(
        "expected \"every <duration>\" or a cron expression of 5 or 6 fields, found {0} field(s)"
    )]
    Fields(usize),
    /// 5 or 6 fields that croner refuses.
    #[error("invalid cron expression: {0}")]
    Cron(croner::errors::CronError),
}

/// A cron expression, parsed once: its normalised 6-field text (leading
/// seconds, the form tokio-cron-scheduler is given) and croner's parse of
/// it (which the scheduler asks when a tick was due). The parse is shared:
/// it is large, and every clone of the config holds one per cron source.
#[derive(Clone)]
pub struct CronSchedule {
    expr: String,
    cron: Arc<croner::Cron>,
}

impl CronSchedule {
    /// The expression in its 6-field form.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The latest occurrence at or before `now_us` (µs since the epoch),
    /// if any.
    pub fn latest_at_or_before(&self, now_us: i64) -> Option<i64> {
        let now = chrono::DateTime::from_timestamp_micros(now_us)?;
        self.cron
            .find_previous_occurrence(&now, true)
            .ok()
            .map(|t| t.timestamp_micros())
    }

    /// The first occurrence after `now_us` (µs since the epoch), if any.
    pub fn next_after(&self, now_us: i64) -> Option<i64> {
        let now = chrono::DateTime::from_timestamp_micros(now_us)?;
        self.cron
            .find_next_occurrence(&now, false)
            .ok()
            .map(|t| t.timestamp_micros())
    }
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr
    }
}

impl Eq for CronSchedule {}

impl Schedule {
    /// Parses the user form (surrounding blanks ignored).
    pub fn parse(s: &str) -> Result<Self, ScheduleError> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("every ") {
            let d = humantime::parse_duration(rest.trim()).map_err(ScheduleError::Duration)?;
            if d < Duration::from_secs(1) {
                return Err(ScheduleError::TooShort);
            }
            return Ok(Schedule::Every(d));
        }
        let expr = match s.split_whitespace().count() {
            5 => format!("0 {s}"),
            6 => s.to_string(),
            n => return Err(ScheduleError::Fields(n)),
        };
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Required)
            .build()
            .parse(&expr)
            .map_err(ScheduleError::Cron)?;
        Ok(Schedule::Cron(CronSchedule {
            expr,
            cron: Arc::new(cron),
        }))
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every(d) => write!(f, "every {}", humantime::format_duration(*d)),
            Schedule::Cron(c) => write!(f, "cron {}", c.expr),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron_expr(s: &str) -> String {
        match Schedule::parse(s).expect("valid") {
            Schedule::Cron(c) => c.expr().to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_every_and_both_cron_forms() {
        assert_eq!(
            Schedule::parse("every 5m").unwrap(),
            Schedule::Every(Duration::from_secs(300))
        );
        assert_eq!(cron_expr("*/5 * * * *"), "0 */5 * * * *");
        assert_eq!(cron_expr(" 30 0 3 * * * "), "30 0 3 * * *");
    }

    #[test]
    fn a_cron_schedule_knows_its_latest_occurrence() {
        let Schedule::Cron(c) = Schedule::parse("0 * * * *").unwrap() else {
            panic!("cron");
        };
        // 2026-01-01T11:00:00Z → itself; 10:59:59Z → 10:00:00Z.
        let eleven = 1_767_265_200_000_000;
        let hour = 3_600_000_000;
        assert_eq!(c.latest_at_or_before(eleven), Some(eleven));
        assert_eq!(
            c.latest_at_or_before(eleven - 1_000_000),
            Some(eleven - hour)
        );
    }

    #[test]
    fn rejects_garbage_with_the_config_messages() {
        let msg = |s: &str| Schedule::parse(s).unwrap_err().to_string();
        assert!(msg("every banana").starts_with("\"every <duration>\": invalid duration"));
        assert_eq!(
            msg("every 0s"),
            "\"every <duration>\": the interval must be at least 1s"
        );
        assert_eq!(
            msg("sometimes"),
            "expected \"every <duration>\" or a cron expression of 5 or 6 fields, found 1 field(s)"
        );
        assert!(msg("61 * * * *").starts_with("invalid cron expression: "));
    }
}
