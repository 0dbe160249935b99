//! Loader tests. They go through [`load_str`] with a fake environment, so they
//! never depend on (or change) the process environment.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::sources::Kinds;
use crate::sources::calendar::{CalendarAuth, CalendarConfig};
use crate::sources::content::ContentConfig;
use crate::sources::demarches::DemarchesConfig;

/// The loader with the shipped kinds.
fn load_str(text: &str, path: &Path, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
    super::load_str(text, path, env, &Kinds::builtin())
}

/// The secret-less loader with the shipped kinds.
fn load_str_without_secrets(
    text: &str,
    path: &Path,
    env: &HashMap<String, String>,
) -> Result<WithoutSecrets, ConfigError> {
    super::load_str_without_secrets(text, path, env, &Kinds::builtin())
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load_ok(toml: &str, vars: &[(&str, &str)]) -> Config {
    match load_str(toml, Path::new("test.toml"), &env(vars)) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{}", e.report()),
    }
}

fn load_err(toml: &str, vars: &[(&str, &str)]) -> ConfigError {
    match load_str(toml, Path::new("test.toml"), &env(vars)) {
        Ok(c) => panic!("expected an invalid config, got {c:?}"),
        Err(e) => e,
    }
}

/// Problem keys, for "is this key reported" assertions.
fn keys(e: &ConfigError) -> Vec<&str> {
    e.problems.iter().map(|p| p.key.as_str()).collect()
}

fn reason<'a>(e: &'a ConfigError, key: &str) -> &'a str {
    match e.problems.iter().find(|p| p.key == key) {
        Some(p) => &p.reason,
        None => panic!("no problem for {key}:\n{}", e.report()),
    }
}

const DS_SOURCE: &str = r#"
[[tenants]]
id = "acme"

[[tenants.sources]]
id = "permits"
kind = "demarches"
schedule = "every 5m"
endpoint = "https://demarche.numerique.gouv.fr/api/v2/graphql"
token = { env = "DS_TOKEN" }
demarche = 1234
"#;

const FULL: &str = r#"
[storage]
database = "sqlite://data/x.db"
runs_retention = "7d"

[server]
listen = "0.0.0.0:8080"

[scheduler]
max_concurrent_syncs = 3
jitter = "2s"
shutdown_timeout = "5s"
lease_ttl = "45s"

[http]
timeout = "20s"
connect_timeout = "3s"
max_retries = 7
initial_backoff = "100ms"
max_backoff = "30s"

[[tenants]]
id = "acme"

[[tenants.sources]]
id = "permits"
kind = "demarches"
schedule = "*/5 * * * *"
endpoint = "https://demarche.numerique.gouv.fr/api/v2/graphql"
token = { env = "DS_TOKEN" }
demarche = 1234
page_size = 50
updated_since = "2020-01-01T00:00:00Z"
reconcile_every = "12h"
deleted_lookback = "7d"

[[tenants.sources]]
id = "team"
kind = "calendar"
schedule = "every 1m"
endpoint = "https://www.googleapis.com/calendar/v3"
calendar_id = "primary"
oauth = { token_url = "https://oauth2.googleapis.com/token", client_id = "cid", client_secret = { env = "GCAL_SECRET" }, refresh_token = "refresh-literal" }
max_results = 500
single_events = true
show_deleted = false
time_min = "2024-01-01T00:00:00Z"
channel_token = { env = "GCAL_CHANNEL" }

[[tenants]]
id = "beta"

[[tenants.sources]]
id = "translations"
kind = "content"
schedule = "30 0 3 * * *"
endpoint = "http://127.0.0.1:8081/v1"
token = "content-literal"
report_import_state = true
webhook_token = { env = "CT_HOOK" }
"#;

const FULL_ENV: &[(&str, &str)] = &[
    ("DS_TOKEN", "ds-secret"),
    ("GCAL_SECRET", "gcal-client-secret"),
    ("GCAL_CHANNEL", "chan"),
    ("CT_HOOK", "hook-secret"),
];

#[test]
fn full_config_gives_the_typed_values() {
    let c = load_ok(FULL, FULL_ENV);
    assert_eq!(c.path, Path::new("test.toml"));
    assert_eq!(c.storage.database, "sqlite://data/x.db");
    assert_eq!(c.storage.runs_retention, Duration::from_secs(7 * 86_400));
    assert_eq!(c.server.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(c.scheduler.max_concurrent_syncs, 3);
    assert_eq!(c.scheduler.jitter, Duration::from_secs(2));
    assert_eq!(c.scheduler.shutdown_timeout, Duration::from_secs(5));
    assert_eq!(c.scheduler.lease_ttl, Duration::from_secs(45));
    assert_eq!(c.http.timeout, Duration::from_secs(20));
    assert_eq!(c.http.connect_timeout, Duration::from_secs(3));
    assert_eq!(c.http.max_retries, 7);
    assert_eq!(c.http.initial_backoff, Duration::from_millis(100));
    assert_eq!(c.http.max_backoff, Duration::from_secs(30));

    assert_eq!(c.tenants.len(), 2);
    assert_eq!(c.tenants[0].id, "acme");
    assert_eq!(c.tenants[1].id, "beta");
    let keys: Vec<String> = c.sources().map(|s| s.key().to_string()).collect();
    assert_eq!(keys, ["acme/permits", "acme/team", "beta/translations"]);

    let ds = c.source(&SourceKey::new("acme", "permits")).unwrap();
    assert_eq!(ds.schedule, Schedule::parse("0 */5 * * * *").expect("cron"));
    assert_eq!(ds.endpoint.host_str(), Some("demarche.numerique.gouv.fr"));
    let Some(d) = ds.kind.get::<DemarchesConfig>() else {
        panic!("{ds:?}")
    };
    assert_eq!(d.token.expose(), "ds-secret");
    assert_eq!(d.token.origin(), &SecretRef::Env("DS_TOKEN".into()));
    assert_eq!(d.demarche, 1234);
    assert_eq!(d.page_size, 50);
    assert_eq!(d.updated_since, "2020-01-01T00:00:00Z");
    assert_eq!(d.reconcile_every, Duration::from_secs(12 * 3600));
    assert_eq!(d.deleted_lookback, Duration::from_secs(7 * 86400));

    let cal = c.source(&SourceKey::new("acme", "team")).unwrap();
    assert_eq!(cal.schedule, Schedule::Every(Duration::from_secs(60)));
    let Some(k) = cal.kind.get::<CalendarConfig>() else {
        panic!("{cal:?}")
    };
    assert_eq!(k.calendar_id, "primary");
    let CalendarAuth::OAuth(o) = &k.auth else {
        panic!("{k:?}")
    };
    assert_eq!(o.token_url.as_str(), "https://oauth2.googleapis.com/token");
    assert_eq!(o.client_id, "cid");
    assert_eq!(o.client_secret.expose(), "gcal-client-secret");
    assert_eq!(o.refresh_token.expose(), "refresh-literal");
    assert_eq!(o.refresh_token.origin(), &SecretRef::Literal);
    assert_eq!(k.max_results, 500);
    assert!(k.single_events);
    assert!(!k.show_deleted);
    assert_eq!(k.time_min.as_deref(), Some("2024-01-01T00:00:00Z"));
    assert_eq!(k.channel_token.as_ref().map(|s| s.expose()), Some("chan"));

    let ct = c.source(&SourceKey::new("beta", "translations")).unwrap();
    assert_eq!(ct.schedule, Schedule::parse("30 0 3 * * *").expect("cron"));
    assert_eq!(ct.endpoint.as_str(), "http://127.0.0.1:8081/v1");
    let Some(k) = ct.kind.get::<ContentConfig>() else {
        panic!("{ct:?}")
    };
    assert_eq!(k.token.expose(), "content-literal");
    assert!(k.report_import_state);
    assert_eq!(
        k.webhook_token.as_ref().map(|s| s.expose()),
        Some("hook-secret")
    );
    assert_eq!(c.secrets().len(), 6);
}

#[test]
fn defaults_fill_every_optional_key() {
    let c = load_ok(DS_SOURCE, &[("DS_TOKEN", "t")]);
    assert_eq!(c.storage.database, "sqlite://var/synchro.db");
    assert_eq!(c.storage.busy_timeout, Duration::from_secs(30));
    assert_eq!(c.storage.runs_retention, Duration::from_secs(30 * 86_400));
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:9750");
    assert_eq!(c.server.max_connections, 512);
    assert_eq!(c.server.max_body_bytes, 2 * 1024 * 1024);
    assert_eq!(c.scheduler.max_concurrent_syncs, 8);
    assert_eq!(c.scheduler.jitter, Duration::from_secs(10));
    assert_eq!(c.scheduler.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(c.scheduler.lease_ttl, Duration::from_secs(30));
    assert_eq!(c.http.timeout, Duration::from_secs(30));
    assert_eq!(c.http.connect_timeout, Duration::from_secs(10));
    assert_eq!(c.http.max_retries, 5);
    assert_eq!(c.http.initial_backoff, Duration::from_millis(500));
    assert_eq!(c.http.max_backoff, Duration::from_secs(60));
    let Some(d) = c.tenants[0].sources[0].kind.get::<DemarchesConfig>() else {
        panic!()
    };
    assert_eq!(d.page_size, 100);
    assert_eq!(d.updated_since, "2000-01-01T00:00:00Z");
    assert_eq!(d.reconcile_every, Duration::from_secs(86400));
    assert_eq!(d.deleted_lookback, Duration::from_secs(30 * 86400));

    // Per-kind defaults, endpoint included.
    let c = load_ok(
        r#"
[[tenants]]
id = "t"
[[tenants.sources]]
id = "cal"
kind = "calendar"
schedule = "every 1m"
calendar_id = "primary"
access_token = "at"
[[tenants.sources]]
id = "ct"
kind = "content"
schedule = "every 1m"
token = "ct"
"#,
        &[],
    );
    let cal = &c.tenants[0].sources[0];
    assert_eq!(
        cal.endpoint.as_str(),
        "https://www.googleapis.com/calendar/v3"
    );
    let Some(k) = cal.kind.get::<CalendarConfig>() else {
        panic!()
    };
    assert!(matches!(k.auth, CalendarAuth::AccessToken(_)));
    assert_eq!(k.max_results, 250);
    assert!(!k.single_events);
    assert!(k.show_deleted);
    assert!(k.time_min.is_none() && k.channel_token.is_none());
    let ct = &c.tenants[0].sources[1];
    assert_eq!(ct.endpoint.as_str(), "https://api.contentor.com/v1");
    let Some(k) = ct.kind.get::<ContentConfig>() else {
        panic!()
    };
    assert!(k.report_import_state);
    assert!(k.webhook_token.is_none());

    // An empty file is a valid daemon with nothing to do.
    assert!(load_ok("", &[]).tenants.is_empty());
}

#[test]
fn env_overrides_replace_file_values_with_typed_conversion() {
    let c = load_ok(
        FULL,
        &[
            FULL_ENV[0],
            FULL_ENV[1],
            FULL_ENV[2],
            FULL_ENV[3],
            (
                "SYNCHRO__STORAGE__DATABASE",
                "sqlite:///var/lib/synchro/db.sqlite",
            ),
            ("SYNCHRO__SERVER__LISTEN", "0.0.0.0:9750"),
            ("SYNCHRO__SCHEDULER__MAX_CONCURRENT_SYNCS", "2"),
            ("synchro__http__timeout", "1m"),
            ("SYNCHRO__TENANTS__0__SOURCES__0__PAGE_SIZE", "25"),
            ("SYNCHRO__TENANTS__0__SOURCES__1__SINGLE_EVENTS", "false"),
            ("SYNCHRO__TENANTS__0__SOURCES__1__CALENDAR_ID", "007"),
            ("SYNCHRO__TENANTS__1__SOURCES__0__TOKEN__ENV", "OTHER"),
            ("OTHER", "other-secret"),
        ],
    );
    assert_eq!(c.storage.database, "sqlite:///var/lib/synchro/db.sqlite");
    assert_eq!(c.server.listen.to_string(), "0.0.0.0:9750");
    assert_eq!(c.scheduler.max_concurrent_syncs, 2);
    assert_eq!(c.http.timeout, Duration::from_secs(60));
    let Some(d) = c.tenants[0].sources[0].kind.get::<DemarchesConfig>() else {
        panic!()
    };
    assert_eq!(d.page_size, 25);
    let Some(k) = c.tenants[0].sources[1].kind.get::<CalendarConfig>() else {
        panic!()
    };
    assert!(!k.single_events);
    assert_eq!(k.calendar_id, "007", "string keys stay strings");
    let Some(k) = c.tenants[1].sources[0].kind.get::<ContentConfig>() else {
        panic!()
    };
    assert_eq!(k.token.expose(), "other-secret");
    assert_eq!(k.token.origin(), &SecretRef::Env("OTHER".into()));
}

#[test]
fn env_overrides_are_checked_like_the_file() {
    let e = load_err(
        DS_SOURCE,
        &[
            ("DS_TOKEN", "t"),
            ("SYNCHRO__STORAGE__COLOUR", "blue"),
            ("SYNCHRO__SCHEDULER__MAX_CONCURRENT_SYNCS", "lots"),
            ("SYNCHRO__TENANTS__3__ID", "x"),
            ("SYNCHRO__TENANTS__0__SOURCES__0__PAGE_SIZE", "0"),
        ],
    );
    assert!(
        reason(&e, "storage.colour").contains("SYNCHRO__STORAGE__COLOUR"),
        "{}",
        e.report()
    );
    assert!(
        reason(&e, "scheduler.max_concurrent_syncs").contains("integer"),
        "{}",
        e.report()
    );
    assert!(
        reason(&e, "tenants[3]").contains("cannot add"),
        "{}",
        e.report()
    );
    assert!(reason(&e, "tenants[0].sources[0].page_size").contains("between 1 and 100"));
    assert_eq!(e.problems.len(), 4, "{}", e.report());
}

#[test]
fn unknown_key_missing_env_secret_and_bad_cron_are_all_reported() {
    let e = load_err(
        r#"
[storage]
database = "sqlite://var/x.db"
colour = "blue"

[[tenants]]
id = "acme"

[[tenants.sources]]
id = "permits"
kind = "demarches"
schedule = "61 * * * *"
token = { env = "DS_TOKEN" }
demarche = 1

[[tenants.sources]]
id = "other"
kind = "demarches"
schedule = "every 5m"
tokn = "literal"
token = "x-token"
demarche = 2
"#,
        &[],
    );
    assert!(reason(&e, "storage.colour").starts_with("unknown key"));
    assert!(reason(&e, "storage.colour").contains("database"));
    assert!(reason(&e, "tenants[0].sources[0].schedule").contains("invalid cron"));
    assert_eq!(
        reason(&e, "tenants[0].sources[0].token"),
        "environment variable DS_TOKEN is not set"
    );
    assert!(reason(&e, "tenants[0].sources[1].tokn").starts_with("unknown key"));
    assert_eq!(e.problems.len(), 4, "{}", e.report());

    let report = e.report();
    assert!(report.lines().count() == 4);
    assert!(
        report.contains(
            "test.toml: tenants[0].sources[0].token: environment variable DS_TOKEN is not set"
        ),
        "{report}"
    );
    assert_eq!(
        e.to_string(),
        "invalid configuration test.toml: 4 problem(s)"
    );
}

#[test]
fn wrong_types_missing_keys_and_ranges_are_reported_per_key() {
    let e = load_err(
        r#"
[server]
listen = "localhost"

[scheduler]
max_concurrent_syncs = 0
jitter = "10 parsecs"

[http]
timeout = 30
max_retries = "5"
initial_backoff = "10s"
max_backoff = "1s"

[[tenants]]
id = "acme"

[[tenants.sources]]
id = "permits"
kind = "demarches"
schedule = "every 5m"
token = "t"
page_size = 101
updated_since = "yesterday"

[[tenants.sources]]
id = "x"
kind = "ftp"
schedule = "sometimes"
whatever = 1

[[tenants.sources]]
kind = "calendar"
schedule = "every 0s"
calendar_id = ""
"#,
        &[],
    );
    let r = e.report();
    for key in [
        "server.listen",
        "scheduler.max_concurrent_syncs",
        "scheduler.jitter",
        "http.timeout",
        "http.max_retries",
        "http.max_backoff",
        "tenants[0].sources[0].demarche",
        "tenants[0].sources[0].page_size",
        "tenants[0].sources[0].updated_since",
        "tenants[0].sources[1].kind",
        "tenants[0].sources[1].schedule",
        "tenants[0].sources[2].id",
        "tenants[0].sources[2].schedule",
        "tenants[0].sources[2].calendar_id",
        "tenants[0].sources[2].access_token",
    ] {
        assert!(keys(&e).contains(&key), "{key} not reported:\n{r}");
    }
    assert_eq!(
        reason(&e, "http.timeout"),
        "expected a duration string such as \"30s\", found an integer"
    );
    assert_eq!(
        reason(&e, "http.max_retries"),
        "expected an integer, found a string"
    );
    assert_eq!(
        reason(&e, "tenants[0].sources[0].demarche"),
        "missing required key"
    );
    assert!(reason(&e, "tenants[0].sources[1].kind").contains("demarches, calendar, content"));
    // The keys of a source of unknown kind are not judged.
    assert!(!keys(&e).contains(&"tenants[0].sources[1].whatever"), "{r}");
    assert_eq!(e.problems.len(), 15, "{r}");
}

#[test]
fn duplicate_and_malformed_ids_are_rejected() {
    let e = load_err(
        r#"
[[tenants]]
id = "acme"
[[tenants.sources]]
id = "a"
kind = "content"
schedule = "every 1m"
token = "t"
[[tenants.sources]]
id = "a"
kind = "content"
schedule = "every 1m"
token = "t"

[[tenants]]
id = "acme"
[[tenants.sources]]
id = "a"
kind = "content"
schedule = "every 1m"
token = "t"

[[tenants]]
id = "bad/id"

[[tenants]]
id = "ok"
[[tenants.sources]]
id = "has space"
kind = "content"
schedule = "every 1m"
token = "t"
"#,
        &[],
    );
    let r = e.report();
    assert!(
        reason(&e, "tenants[0].sources[1].id").contains("duplicate source id \"a\""),
        "{r}"
    );
    assert!(
        reason(&e, "tenants[0].sources[1].id").contains("tenants[0].sources[0]"),
        "{r}"
    );
    assert!(
        reason(&e, "tenants[1].id").contains("duplicate tenant id \"acme\""),
        "{r}"
    );
    assert!(reason(&e, "tenants[2].id").contains("A-Z"), "{r}");
    assert!(
        reason(&e, "tenants[3].sources[0].id").contains("A-Z"),
        "{r}"
    );
    assert_eq!(
        e.problems.len(),
        4,
        "the same source id in another tenant is fine:\n{r}"
    );
}

#[test]
fn endpoints_must_be_https_or_loopback_http() {
    let with = |endpoint: &str| {
        format!(
            "[[tenants]]\nid = \"t\"\n[[tenants.sources]]\nid = \"s\"\nkind = \"content\"\n\
             schedule = \"every 1m\"\ntoken = \"t\"\nendpoint = \"{endpoint}\"\n"
        )
    };
    for good in [
        "https://api.contentor.com/v1",
        "http://127.0.0.1:9999/v1",
        "http://localhost/v1",
        "http://[::1]:80/",
    ] {
        load_ok(&with(good), &[]);
    }
    for bad in [
        "ftp://example.com/x",
        "http://example.com/v1",
        "not a url",
        "https://user:pw@example.com/",
        "/relative/path",
    ] {
        let e = load_err(&with(bad), &[]);
        assert_eq!(
            keys(&e),
            ["tenants[0].sources[0].endpoint"],
            "{bad}: {}",
            e.report()
        );
    }
    // The OAuth token URL follows the same rule.
    let e = load_err(
        r#"
[[tenants]]
id = "t"
[[tenants.sources]]
id = "c"
kind = "calendar"
schedule = "every 1m"
calendar_id = "primary"
oauth = { token_url = "http://oauth.example.com/token", client_id = "x", client_secret = "s", refresh_token = "r", extra = 1 }
"#,
        &[],
    );
    assert_eq!(
        keys(&e),
        [
            "tenants[0].sources[0].oauth.token_url",
            "tenants[0].sources[0].oauth.extra"
        ],
        "{}",
        e.report()
    );
}

#[test]
fn secrets_never_appear_in_messages() {
    let toml = r#"
[storage]
database = "supersecret-in-database"
api_key = "supersecret-unknown-key"

[[tenants]]
id = "acme"

[[tenants.sources]]
id = "permits"
kind = "demarches"
schedule = "every 5m"
endpoint = "https://user:supersecret-in-url@example.com/?key=supersecret-in-query"
token = ["supersecret-in-array"]
demarche = "supersecret-as-number"
tokn = "supersecret-misspelt"

[[tenants.sources]]
id = "other"
kind = "content"
schedule = "supersecret-as-schedule"
token = { env = "supersecret-as-env-name" }
webhook_token = { value = "supersecret-in-table" }

[[tenants.sources]]
id = "third"
kind = "calendar"
schedule = "every 1m"
calendar_id = 12345
access_token = "supersecret-literal"
oauth = { token_url = "https://o.example.com", client_id = "c", client_secret = "supersecret-oauth", refresh_token = 42 }
"#;
    let e = load_err(toml, &[]);
    let all = format!("{}\n{e}\n{e:?}", e.report());
    assert!(!all.contains("supersecret"), "secret leaked:\n{all}");
    // ...while each bad key is still named.
    for key in [
        "storage.database",
        "storage.api_key",
        "tenants[0].sources[0].endpoint",
        "tenants[0].sources[0].token",
        "tenants[0].sources[0].demarche",
        "tenants[0].sources[0].tokn",
        "tenants[0].sources[1].schedule",
        "tenants[0].sources[1].token",
        "tenants[0].sources[1].webhook_token.value",
        "tenants[0].sources[2].calendar_id",
        "tenants[0].sources[2].oauth",
        "tenants[0].sources[2].oauth.refresh_token",
    ] {
        assert!(keys(&e).contains(&key), "{key} not reported:\n{all}");
    }

    // A TOML syntax error on a token line does not quote the line.
    let e = load_err(
        "[http]\ntimeout = \"1s\"\ntoken = \"supersecret-unterminated\n",
        &[],
    );
    let all = e.report();
    assert!(!all.contains("supersecret"), "{all}");
    assert!(all.starts_with("test.toml: line 3"), "{all}");

    // A resolved secret echoed by some other message is scrubbed too.
    let e = load_err(
        &DS_SOURCE.replace("demarche = 1234", "demarche = 0\nschedule2 = 1"),
        &[("DS_TOKEN", "supersecret-from-env")],
    );
    assert!(!e.report().contains("supersecret"));
}

#[test]
fn file_secrets_are_read_trimmed_and_relative_to_the_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "file-secret\n").unwrap();
    let abs = dir.path().join("token");
    let toml = format!(
        "[[tenants]]\nid = \"t\"\n\
         [[tenants.sources]]\nid = \"a\"\nkind = \"content\"\nschedule = \"every 1m\"\ntoken = {{ file = \"{}\" }}\n\
         [[tenants.sources]]\nid = \"b\"\nkind = \"content\"\nschedule = \"every 1m\"\ntoken = {{ file = \"token\" }}\n",
        abs.display()
    );
    let c = match load_str(&toml, &dir.path().join("synchro.toml"), &HashMap::new()) {
        Ok(c) => c,
        Err(e) => panic!("{}", e.report()),
    };
    for s in c.sources() {
        let Some(k) = s.kind.get::<ContentConfig>() else {
            panic!()
        };
        assert_eq!(k.token.expose(), "file-secret");
        assert_eq!(k.token.origin(), &SecretRef::File(abs.clone()));
    }

    let missing = dir.path().join("nope");
    let toml = format!(
        "[[tenants]]\nid = \"t\"\n[[tenants.sources]]\nid = \"a\"\nkind = \"content\"\n\
         schedule = \"every 1m\"\ntoken = {{ file = \"{}\", env = \"X\" }}\nwebhook_token = {{ file = \"{}\" }}\n",
        abs.display(),
        missing.display()
    );
    let e = load_err(&toml, &[("X", "x")]);
    assert_eq!(
        reason(&e, "tenants[0].sources[0].token"),
        "set either env or file, not both"
    );
    let r = reason(&e, "tenants[0].sources[0].webhook_token");
    assert!(
        r.starts_with("cannot read secret file ") && r.contains("nope"),
        "{r}"
    );
}

#[test]
fn calendar_takes_exactly_one_auth() {
    let base = "[[tenants]]\nid = \"t\"\n[[tenants.sources]]\nid = \"c\"\nkind = \"calendar\"\n\
                schedule = \"every 1m\"\ncalendar_id = \"primary\"\n";
    let e = load_err(base, &[]);
    assert_eq!(keys(&e), ["tenants[0].sources[0].access_token"]);
    let both = format!(
        "{base}access_token = \"a\"\noauth = {{ token_url = \"https://o.example.com/t\", client_id = \"c\", client_secret = \"s\", refresh_token = \"r\" }}\n"
    );
    let e = load_err(&both, &[]);
    assert_eq!(keys(&e), ["tenants[0].sources[0].oauth"]);
    let e = load_err(&format!("{base}oauth = {{ client_id = \"c\" }}\n"), &[]);
    assert_eq!(
        keys(&e),
        [
            "tenants[0].sources[0].oauth.token_url",
            "tenants[0].sources[0].oauth.client_secret",
            "tenants[0].sources[0].oauth.refresh_token"
        ],
        "{}",
        e.report()
    );
}

#[test]
fn wrong_shapes_of_tables_and_arrays_are_reported() {
    let e = load_err("storage = \"x\"\n[tenants]\nid = \"t\"\n", &[]);
    assert_eq!(reason(&e, "storage"), "expected a table, found a string");
    assert!(
        reason(&e, "tenants").contains("[[tenants]]"),
        "{}",
        e.report()
    );
    let e = load_err(
        "Storage = {}\n[[tenants]]\nid = \"t\"\nsources = [1]\n",
        &[],
    );
    assert!(
        reason(&e, "Storage").starts_with("unknown key"),
        "keys are case-sensitive"
    );
    assert_eq!(
        reason(&e, "tenants[0].sources[0]"),
        "expected a table, found an integer"
    );
}

#[test]
fn the_example_config_loads_with_its_env_vars_set() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/synchro.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let vars = [
        ("ACME_DS_TOKEN", "ds"),
        ("ACME_GCAL_TOKEN", "gcal"),
        ("ACME_GCAL_CHANNEL_TOKEN", "chan"),
        ("ACME_CONTENTOR_TOKEN", "ct"),
        ("ACME_CONTENTOR_WEBHOOK_TOKEN", "hook"),
    ];
    let c = match load_str(&text, &path, &env(&vars)) {
        Ok(c) => c,
        Err(e) => panic!("{}", e.report()),
    };
    let kinds: Vec<&str> = c.sources().map(|s| s.kind_name()).collect();
    assert_eq!(kinds, ["demarches", "calendar", "content"]);
    // ...and names every variable it needs when they are not set.
    let e = load_err(&text, &[]);
    for (var, _) in vars {
        assert!(e.report().contains(var), "{var} not named:\n{}", e.report());
    }
}

#[test]
fn load_reads_the_file_and_reports_a_missing_one() {
    let e = load(Path::new("/nonexistent/synchro.toml"), &Kinds::builtin()).unwrap_err();
    assert_eq!(e.problems.len(), 1);
    assert!(
        e.report()
            .starts_with("/nonexistent/synchro.toml: (file): cannot read the file")
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("synchro.toml");
    std::fs::write(&path, "[[tenants]]\nid = \"t\"\n").unwrap();
    let c = load(&path, &Kinds::builtin()).unwrap();
    assert_eq!(c.tenants[0].id, "t");
}

#[test]
fn unrelated_and_odd_env_vars_are_ignored_or_reported_without_panicking() {
    // Not overrides: a single underscore, a multi-byte name around the prefix length.
    load_ok(
        DS_SOURCE,
        &[
            ("DS_TOKEN", "t"),
            ("SYNCHRO_CONFIG", "/etc/synchro/synchro.toml"),
            ("SYNCHRO_éé", "x"),
        ],
    );
    let e = load_err(
        DS_SOURCE,
        &[("DS_TOKEN", "t"), ("SYNCHRO__HTTP____TIMEOUT", "1s")],
    );
    assert_eq!(keys(&e), ["SYNCHRO__HTTP____TIMEOUT"], "{}", e.report());
}

#[test]
fn per_host_limits_have_defaults_and_overrides() {
    let c = load_ok(DS_SOURCE, &[("DS_TOKEN", "t")]);
    assert_eq!(c.http.per_host_requests_per_second, 10.0);
    assert_eq!(c.http.per_host_concurrency, 4);
    assert!(c.http.hosts.is_empty());

    let c = load_ok(
        r#"
[http]
per_host_requests_per_second = 2.5
per_host_concurrency = 16

[http.hosts."API.Contentor.com"]
requests_per_second = 2
concurrency = 1

[http.hosts."127.0.0.1:8080"]
requests_per_second = 0.5

[http.hosts."[::1]:9000"]
concurrency = 3
"#,
        &[],
    );
    assert_eq!(c.http.per_host_requests_per_second, 2.5);
    assert_eq!(c.http.per_host_concurrency, 16);
    let hosts: Vec<(&str, &HostLimits)> =
        c.http.hosts.iter().map(|(k, v)| (k.as_str(), v)).collect();
    assert_eq!(
        hosts,
        [
            (
                "127.0.0.1:8080",
                &HostLimits {
                    requests_per_second: Some(0.5),
                    concurrency: None
                }
            ),
            (
                "[::1]:9000",
                &HostLimits {
                    requests_per_second: None,
                    concurrency: Some(3)
                }
            ),
            (
                "api.contentor.com",
                &HostLimits {
                    requests_per_second: Some(2.0),
                    concurrency: Some(1)
                }
            ),
        ]
    );

    // From the environment, typed like the file.
    let c = load_ok(
        "[http.hosts.\"x.example\"]\nconcurrency = 2\n",
        &[
            ("SYNCHRO__HTTP__PER_HOST_REQUESTS_PER_SECOND", "7.5"),
            ("SYNCHRO__HTTP__PER_HOST_CONCURRENCY", "9"),
        ],
    );
    assert_eq!(c.http.per_host_requests_per_second, 7.5);
    assert_eq!(c.http.per_host_concurrency, 9);
    assert_eq!(c.http.hosts["x.example"].concurrency, Some(2));
}

#[test]
fn per_host_limits_are_validated_with_their_key_paths() {
    let e = load_err(
        r#"
[http]
per_host_requests_per_second = 0
per_host_concurrency = 0

[http.hosts."api.contentor.com"]
requests_per_second = -1
concurrency = "two"
burst = 3

[http.hosts."https://example.org/v1"]
concurrency = 2

[http.hosts."Example.ORG"]
concurrency = 1

[http.hosts."example.org"]
concurrency = 1

[http.hosts]
"plain.example" = 5
"#,
        &[],
    );
    assert_eq!(
        reason(&e, "http.per_host_requests_per_second"),
        "must be greater than 0 and at most 100000, got 0"
    );
    assert_eq!(
        reason(&e, "http.per_host_concurrency"),
        "must be between 1 and 1024, got 0"
    );
    assert_eq!(
        reason(&e, "http.hosts.\"api.contentor.com\".requests_per_second"),
        "must be greater than 0 and at most 100000, got -1"
    );
    assert_eq!(
        reason(&e, "http.hosts.\"api.contentor.com\".concurrency"),
        "expected an integer, found a string"
    );
    assert!(
        reason(&e, "http.hosts.\"api.contentor.com\".burst")
            .starts_with("unknown key; expected one of: concurrency, requests_per_second"),
        "{}",
        e.report()
    );
    assert!(
        reason(&e, "http.hosts.\"https://example.org/v1\"").contains("no scheme, no path"),
        "{}",
        e.report()
    );
    assert!(
        reason(&e, "http.hosts.\"example.org\"").starts_with("duplicate host \"example.org\""),
        "{}",
        e.report()
    );
    assert_eq!(
        reason(&e, "http.hosts.\"plain.example\""),
        "expected a table, found an integer"
    );

    let e = load_err(
        "[http]\nper_host_requests_per_second = \"fast\"\n",
        &[("SYNCHRO__HTTP__PER_HOST_CONCURRENCY", "many")],
    );
    assert_eq!(
        reason(&e, "http.per_host_requests_per_second"),
        "expected a number, found a string"
    );
    assert_eq!(
        reason(&e, "http.per_host_concurrency"),
        "expected an integer (set by environment variable SYNCHRO__HTTP__PER_HOST_CONCURRENCY)"
    );
    let e = load_err("[http]\nper_host_requests_per_second = inf\n", &[]);
    assert_eq!(
        reason(&e, "http.per_host_requests_per_second"),
        "must be a finite number"
    );
}

#[test]
fn a_lease_ttl_out_of_bounds_names_the_key() {
    for (ttl, why) in [
        ("500ms", "must be between 1s and 1h, got 500ms"),
        ("2h", "must be between 1s and 1h, got 2h"),
    ] {
        let toml = format!("[scheduler]\nlease_ttl = \"{ttl}\"\n{DS_SOURCE}");
        let e = load_err(&toml, &[("DS_TOKEN", "t")]);
        assert_eq!(reason(&e, "scheduler.lease_ttl"), why);
    }
}

#[test]
fn max_pages_per_run_defaults_and_is_read_per_source() {
    let c = load_ok(DS_SOURCE, &[("DS_TOKEN", "t")]);
    let s = c.sources().next().expect("source");
    assert_eq!(s.max_pages_per_run, 100_000);
    let toml = DS_SOURCE.replace("demarche = 1234", "demarche = 1234\nmax_pages_per_run = 50");
    let c = load_ok(&toml, &[("DS_TOKEN", "t")]);
    assert_eq!(c.sources().next().expect("source").max_pages_per_run, 50);
    let toml = DS_SOURCE.replace("demarche = 1234", "demarche = 1234\nmax_pages_per_run = 0");
    let e = load_err(&toml, &[("DS_TOKEN", "t")]);
    assert!(
        reason(&e, "tenants[0].sources[0].max_pages_per_run").contains("at least 1"),
        "{}",
        e.report()
    );
}

#[test]
fn server_limits_are_read_from_the_file_and_the_environment() {
    let toml = format!("[server]\nmax_connections = 64\nmax_body_bytes = 65536\n{DS_SOURCE}");
    let c = load_ok(&toml, &[("DS_TOKEN", "t")]);
    assert_eq!(c.server.max_connections, 64);
    assert_eq!(c.server.max_body_bytes, 65536);
    let c = load_ok(
        &toml,
        &[
            ("DS_TOKEN", "t"),
            ("SYNCHRO__SERVER__MAX_CONNECTIONS", "100"),
            ("SYNCHRO__SERVER__MAX_BODY_BYTES", "1048576"),
        ],
    );
    assert_eq!(c.server.max_connections, 100);
    assert_eq!(c.server.max_body_bytes, 1_048_576);
}

#[test]
fn server_limits_out_of_range_are_reported_per_key() {
    for (toml, key, why) in [
        (
            "max_connections = 0",
            "server.max_connections",
            "between 1 and 32768",
        ),
        (
            "max_connections = 100000",
            "server.max_connections",
            "between 1 and 32768",
        ),
        (
            "max_connections = \"many\"",
            "server.max_connections",
            "integer",
        ),
        (
            "max_body_bytes = 10",
            "server.max_body_bytes",
            "between 1024 and 67108864",
        ),
        ("max_body_bytes = 1e9", "server.max_body_bytes", "integer"),
    ] {
        let e = load_err(
            &format!("[server]\n{toml}\n{DS_SOURCE}"),
            &[("DS_TOKEN", "t")],
        );
        assert_eq!(keys(&e), vec![key], "{toml}");
        assert!(reason(&e, key).contains(why), "{toml}: {}", reason(&e, key));
    }
}

#[test]
fn without_secrets_unavailable_values_are_warnings_and_real_problems_still_fail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("synchro.toml");
    std::fs::write(dir.path().join("empty"), "\n").unwrap();
    // Every way a correctly written secret can be out of reach of this shell.
    let toml = FULL
        .replace(
            "webhook_token = { env = \"CT_HOOK\" }",
            "webhook_token = { file = \"no/such/file\" }",
        )
        .replace(
            "channel_token = { env = \"GCAL_CHANNEL\" }",
            "channel_token = { file = \"empty\" }",
        );
    let vars = env(&[("GCAL_SECRET", "  "), ("OTHER", "x")]);
    let strict = load_str(&toml, &path, &vars).unwrap_err();
    let loaded = match load_str_without_secrets(&toml, &path, &vars) {
        Ok(l) => l,
        Err(e) => panic!("{}", e.report()),
    };
    let warned: Vec<&str> = loaded.unresolved.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(warned, keys(&strict), "the same four, as warnings");
    assert_eq!(
        warned,
        [
            "tenants[0].sources[0].token",
            "tenants[0].sources[1].oauth.client_secret",
            "tenants[0].sources[1].channel_token",
            "tenants[1].sources[0].webhook_token",
        ]
    );
    assert!(loaded.unresolved[0].reason.contains("DS_TOKEN is not set"));
    let c = loaded.config;
    assert_eq!(c.sources().count(), 3);
    let db = dir.path().join("data/x.db");
    assert_eq!(c.storage.database, format!("sqlite://{}", db.display()));
    let Some(d) = c.tenants[0].sources[0].kind.get::<DemarchesConfig>() else {
        panic!()
    };
    assert_eq!(d.token.expose(), "", "a placeholder, never a guess");

    // A malformed reference or any other problem is still an error.
    let bad = toml.replace(
        "token = { env = \"DS_TOKEN\" }",
        "token = { env = \"1-bad\" }",
    );
    let e = load_str_without_secrets(&bad, &path, &vars).unwrap_err();
    assert_eq!(keys(&e), ["tenants[0].sources[0].token"]);
    let bad = toml.replace("jitter = \"2s\"", "jitter = \"2s\"\ncolour = 1");
    let e = load_str_without_secrets(&bad, &path, &vars).unwrap_err();
    assert_eq!(keys(&e), ["scheduler.colour"]);
}

#[test]
fn a_relative_database_path_is_taken_from_the_config_folder_like_secret_files() {
    let etc = Path::new("/etc/synchro/synchro.toml");
    let database = |toml: &str, vars: &[(&str, &str)]| match load_str(toml, etc, &env(vars)) {
        Ok(c) => c.storage.database,
        Err(e) => panic!("{}", e.report()),
    };
    let db = |url: &str| database(&format!("[storage]\ndatabase = \"{url}\"\n"), &[]);
    assert_eq!(db("sqlite://var/x.db"), "sqlite:///etc/synchro/var/x.db");
    assert_eq!(db("sqlite:./var/x.db"), "sqlite:///etc/synchro/var/x.db");
    assert_eq!(
        db("sqlite://../x.db?mode=rwc"),
        "sqlite:///etc/synchro/../x.db?mode=rwc"
    );
    assert_eq!(db("sqlite:///var/lib/x.db"), "sqlite:///var/lib/x.db");
    // The default and an override are resolved the same way.
    assert_eq!(database("", &[]), "sqlite:///etc/synchro/var/synchro.db");
    assert_eq!(
        database("", &[("SYNCHRO__STORAGE__DATABASE", "sqlite://state/s.db")]),
        "sqlite:///etc/synchro/state/s.db"
    );
    // A file read through `load` anchors on its absolute folder.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("synchro.toml");
    std::fs::write(&path, "[storage]\ndatabase = \"sqlite://var/x.db\"\n").unwrap();
    let c = load(&path, &Kinds::builtin()).unwrap();
    let expected = dir.path().join("var/x.db");
    assert_eq!(
        c.storage.database,
        format!("sqlite://{}", expected.display())
    );
}

#[test]
fn a_bad_runs_retention_names_the_key() {
    for (value, why) in [
        ("\"30s\"", "must be between 1h and 100years, got 30s"),
        ("\"forever\"", "invalid duration"),
        (
            "30",
            "expected a duration string such as \"30s\", found an integer",
        ),
    ] {
        let toml = format!("[storage]\nruns_retention = {value}\n{DS_SOURCE}");
        let e = load_err(&toml, &[("DS_TOKEN", "t")]);
        let got = reason(&e, "storage.runs_retention");
        assert!(got.starts_with(why), "{value}: {got}");
    }
    let c = load_ok(
        DS_SOURCE,
        &[
            ("DS_TOKEN", "t"),
            ("SYNCHRO__STORAGE__RUNS_RETENTION", "90d"),
        ],
    );
    assert_eq!(c.storage.runs_retention, Duration::from_secs(90 * 86_400));
}
#[cfg(unix)]
#[test]
fn secret_files_open_to_group_or_others_are_warned_about_not_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open-token");
    let closed = dir.path().join("closed-token");
    std::fs::write(&open, "open-secret\n").unwrap();
    std::fs::write(&closed, "closed-secret\n").unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o600)).unwrap();
    let toml = "[[tenants]]\nid = \"t\"\n\
         [[tenants.sources]]\nid = \"a\"\nkind = \"content\"\nschedule = \"every 1m\"\n\
         token = { file = \"closed-token\" }\nwebhook_token = { file = \"open-token\" }\n";
    let c = match load_str(toml, &dir.path().join("synchro.toml"), &HashMap::new()) {
        Ok(c) => c,
        Err(e) => panic!("{}", e.report()),
    };
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    let w = &c.warnings[0];
    assert_eq!(w.key, "tenants[0].sources[0].webhook_token");
    assert!(
        w.reason.contains(&open.display().to_string()) && w.reason.contains("mode 0644"),
        "{}",
        w.reason
    );
    assert!(!w.reason.contains("open-secret"));

    // Group-readable only, or writable by others, counts too; 0400 does not.
    for (mode, warned) in [(0o640, true), (0o602, true), (0o400, false)] {
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(mode)).unwrap();
        let c = load_str(toml, &dir.path().join("synchro.toml"), &HashMap::new())
            .unwrap_or_else(|e| panic!("{}", e.report()));
        assert_eq!(!c.warnings.is_empty(), warned, "mode {mode:o}");
    }
}

#[test]
fn a_postgres_database_takes_its_password_from_a_secret_and_never_from_the_url() {
    let toml = |storage: &str| format!("[storage]\n{storage}\n{DS_SOURCE}");
    let c = load_ok(
        &toml(
            "database = \"postgres://synchro@db.internal:5433/synchro?sslmode=verify-full\"\n\
             password = { env = \"PGPASS_TEST\" }\npool_size = 25",
        ),
        &[("PGPASS_TEST", "s3cret-pw"), ("DS_TOKEN", "t")],
    );
    assert_eq!(
        c.storage.database, "postgres://synchro@db.internal:5433/synchro?sslmode=verify-full",
        "a Postgres URL is kept as written, not taken as a path"
    );
    assert_eq!(c.storage.pool_size, 25);
    assert_eq!(
        c.storage.password.as_ref().map(|p| p.expose()),
        Some("s3cret-pw")
    );
    assert!(
        c.secrets().iter().any(|s| s.expose() == "s3cret-pw"),
        "the password is scrubbed from errors like every secret"
    );
    assert!(!format!("{c:?}").contains("s3cret-pw"));

    // A password inside the URL: refused, named, never echoed.
    let e = load_err(
        &toml("database = \"postgres://synchro:hunter22@db/synchro\""),
        &[("DS_TOKEN", "t")],
    );
    assert!(
        reason(&e, "storage.database").contains("storage.password"),
        "{}",
        e.report()
    );
    assert!(!e.report().contains("hunter22"), "{}", e.report());

    for (storage, key, why) in [
        (
            "database = \"postgres://synchro@db\"",
            "storage.database",
            "no database",
        ),
        (
            "database = \"postgres:///synchro\"",
            "storage.database",
            "no host",
        ),
        (
            "database = \"postgres://u@h/d?sslmode=sometimes\"",
            "storage.database",
            "sslmode=sometimes",
        ),
        (
            "database = \"mysql://u@h/d\"",
            "storage.database",
            "postgres://",
        ),
        ("pool_size = 0", "storage.pool_size", "between 1 and 1000"),
        ("password = 7", "storage.password", "expected a string"),
    ] {
        let e = load_err(&toml(storage), &[("DS_TOKEN", "t")]);
        assert!(reason(&e, key).contains(why), "{storage}: {}", e.report());
    }
}
