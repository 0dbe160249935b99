//! `synchro simulate`: only the simulated upstreams, for tests and benchmarks.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use synchro_simulator::Simulator;
use tokio_util::sync::CancellationToken;

use super::CliError;

/// Démarche seeded by default, and its size.
const DEFAULT_DEMARCHE: i64 = 1234;
const DEFAULT_DOSSIERS: usize = 500;
/// Calendar seeded by default, and its size.
const DEFAULT_CALENDAR: &str = "primary";
const DEFAULT_EVENTS: usize = 500;
/// Content requests seeded by default, and their batch size.
const DEFAULT_CONTENT_REQUESTS: usize = 500;
const DEFAULT_CONTENT_BATCH: usize = 25;

pub async fn simulate(listen: SocketAddr) -> Result<ExitCode, CliError> {
    let stop = CancellationToken::new();
    let _reloads =
        crate::shutdown::install(stop.clone()).context("cannot install signal handlers")?;
    let sim = Simulator::start(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    sim.ds().seed(DEFAULT_DEMARCHE, DEFAULT_DOSSIERS);
    println!("demarches endpoint: {}", sim.ds_endpoint());
    println!(
        "demarches token:    {}",
        synchro_simulator::DEFAULT_DS_TOKEN
    );
    sim.calendar().seed(DEFAULT_CALENDAR, DEFAULT_EVENTS);
    println!("calendar endpoint:  {}", sim.calendar_endpoint());
    println!(
        "calendar token:     {}",
        synchro_simulator::DEFAULT_CALENDAR_TOKEN
    );
    println!(
        "oauth token url:    {} (client {}, secret {}, refresh token {})",
        sim.oauth_token_url(),
        synchro_simulator::DEFAULT_OAUTH_CLIENT_ID,
        synchro_simulator::DEFAULT_OAUTH_CLIENT_SECRET,
        synchro_simulator::DEFAULT_REFRESH_TOKEN
    );
    println!("seeded calendar {DEFAULT_CALENDAR:?} with {DEFAULT_EVENTS} events");
    sim.content()
        .seed(DEFAULT_CONTENT_REQUESTS, DEFAULT_CONTENT_BATCH);
    println!("content endpoint:   {}", sim.content_endpoint());
    println!(
        "content token:      {}",
        synchro_simulator::DEFAULT_CONTENT_TOKEN
    );
    println!("seeded {DEFAULT_CONTENT_REQUESTS} content requests");
    println!(
        "seeded démarche {DEFAULT_DEMARCHE} with {DEFAULT_DOSSIERS} dossiers; control API under http://{}/_sim/",
        sim.addr()
    );
    stop.cancelled().await;
    sim.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
