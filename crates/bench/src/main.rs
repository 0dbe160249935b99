//! Benchmark harness (issue 7): every figure next to a baseline measured in
//! the same run, written to `BENCHMARKS.md` with the machine and the command.
//!
//! ```text
//! cargo build --release && cargo run --release -p synchro-bench -- [--records N] [--only a,b] [--out FILE] [--before-binary PATH]
//! ```
//!
//! It drives the release `synchro` binary (built beside it) as a child
//! process, against the simulated upstreams of `synchro-simulator` in this
//! process, and uses nothing of synchro's library but `Store::open` (the
//! schema); see [`baseline`] for what its baselines copy from the store.
//!
//! Each section lives in its own module and returns a [`report::Section`]:
//! * `ingest`: the SQLite ingest ceiling, then a full sync per connector
//!   (records/s as a ratio to the ceiling, peak RSS) and the requests of a
//!   no-change cycle.
//! * `postgres`: a full sync into a Postgres database as a ratio to the
//!   same rows bulk-upserted with `COPY` (skipped without a server).
//! * `replicas`: 100,000 `every 5m` sources shared by three daemons on one
//!   Postgres: start lateness, overlaps, the claim queries' cost per run,
//!   and the failover after a SIGKILL (skipped without a server).
//! * `schedule`: start lateness (p50/p99/max) and overlapping runs of
//!   10,000 `every 1m` sources in one daemon, next to the lateness of bare
//!   tokio timers and of the same daemon with 100 sources.
//! * `webhook`: content callbacks sent open-loop to `synchro run`, latency
//!   to the committed row, next to `/healthz` and a bare commit.
//! * `idle`: 1,000 sources synced and idle next to a 1-source baseline:
//!   RSS, CPU over a minute, and the requests of a no-change cycle.
//! * `feed`: the change feed. Full syncs by the current binary and by the
//!   binary of the commit before the change feed, interleaved (the ratio of
//!   the medians); `/v1/changes` reading a backlog of N changes next to the
//!   same rows read from the SQLite file; push notification → change in a
//!   waiting reader's answer, next to the webhook's own `200`. The before
//!   binary is `--before-binary PATH` (or `SYNCHRO_BENCH_BEFORE_BIN`);
//!   without it the section builds one with `crates/bench/before.sh` (a
//!   `git worktree` of that commit under `target/feed-before`, first build
//!   several minutes); `--before-binary none` skips that comparison.

mod baseline;
mod child;
mod feed;
mod idle;
mod ingest;
mod postgres;
mod replicas;
mod report;
mod schedule;
mod webhook;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use report::Section;

/// Records per connector in the ingest figures (issue 7 asks for 200,000).
const DEFAULT_RECORDS: usize = 200_000;

/// The sections, in the order they run and appear.
const SECTIONS: &[&str] = &[
    "ingest", "postgres", "replicas", "idle", "schedule", "webhook", "feed",
];

struct Args {
    records: usize,
    only: Vec<String>,
    out: Option<PathBuf>,
    /// The `synchro` binary from before the change feed (`feed` section).
    before_binary: Option<PathBuf>,
}

/// Where the `feed` section finds the before binary when `--before-binary`
/// is not given.
const BEFORE_BIN_ENV: &str = "SYNCHRO_BENCH_BEFORE_BIN";

fn parse_args() -> Result<Args> {
    let mut args = Args {
        records: DEFAULT_RECORDS,
        only: SECTIONS.iter().map(|s| s.to_string()).collect(),
        out: None,
        before_binary: std::env::var_os(BEFORE_BIN_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
    };
    let mut partial = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--records" => {
                args.records = it
                    .next()
                    .context("--records needs a number")?
                    .parse()
                    .context("--records needs a number")?;
            }
            "--only" => {
                let list = it.next().context("--only needs a list of sections")?;
                args.only = list.split(',').map(|s| s.trim().to_string()).collect();
                for s in &args.only {
                    if !SECTIONS.contains(&s.as_str()) {
                        bail!(
                            "unknown section {s:?}: expected one of {}",
                            SECTIONS.join(", ")
                        );
                    }
                }
                partial = true;
            }
            "--out" => args.out = Some(PathBuf::from(it.next().context("--out needs a path")?)),
            "--before-binary" => {
                args.before_binary = Some(PathBuf::from(
                    it.next()
                        .context("--before-binary needs a path (or none)")?,
                ));
            }
            "-h" | "--help" => {
                println!(
                    "usage: bench [--records N (default {DEFAULT_RECORDS})] [--only {}] [--out FILE] \
                     [--before-binary PATH|none]\n\
                     A full run writes BENCHMARKS.md; with --only it writes only to --out.\n\
                     --before-binary (or {BEFORE_BIN_ENV}): synchro built from {} for the feed \
                     section; without it, crates/bench/before.sh builds one.",
                    SECTIONS.join(","),
                    feed::BEFORE_COMMIT
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if args.records == 0 {
        bail!("--records must be at least 1");
    }
    if !partial && args.out.is_none() {
        args.out = Some(PathBuf::from("BENCHMARKS.md"));
    }
    Ok(args)
}

/// The command line that reproduces this run, for the report's header.
fn command_line(args: &Args) -> String {
    let mut cmd = String::from("cargo build --release && cargo run --release -p synchro-bench");
    let mut extra = Vec::new();
    if args.records != DEFAULT_RECORDS {
        extra.push(format!("--records {}", args.records));
    }
    if args.only.len() != SECTIONS.len() {
        extra.push(format!("--only {}", args.only.join(",")));
    }
    if let Some(before) = &args.before_binary {
        extra.push(format!("--before-binary {}", before.display()));
    }
    if !extra.is_empty() {
        cmd.push_str(" -- ");
        cmd.push_str(&extra.join(" "));
    }
    cmd
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let bin = child::synchro_binary()?;
    let started = std::time::Instant::now();
    let mut sections: Vec<Section> = Vec::new();
    for name in SECTIONS
        .iter()
        .filter(|s| args.only.iter().any(|o| o == *s))
    {
        eprintln!("== {name}");
        let section = match *name {
            "ingest" => ingest::run(&bin, args.records).await?,
            "postgres" => postgres::run(&bin, args.records).await?,
            "replicas" => replicas::run(&bin).await?,
            "schedule" => schedule::run(&bin).await?,
            "webhook" => webhook::run(&bin).await?,
            "idle" => idle::run(&bin).await?,
            "feed" => feed::run(&bin, args.records, args.before_binary.as_deref()).await?,
            _ => unreachable!("SECTIONS and this match list the same names"),
        };
        sections.push(section);
    }
    let report = report::render(&command_line(&args), started.elapsed(), &sections);
    println!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report).with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!("written to {}", out.display());
    }
    Ok(())
}
