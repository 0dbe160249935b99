//! The accept loop, with the limits an endpoint reachable by strangers
//! needs: a connection cap, a deadline for request heads (which is also the
//! keep-alive idle limit), and a shutdown that ends within its deadline
//! however slow or idle the connected clients are. Bodies are limited where
//! they are read (see `body.rs`), after authentication.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;

/// The listener's limits. Timeouts are constants (operators have no reason
/// to tune them); the two sizes come from `[server]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time a connection has to deliver a complete request head, counted
    /// from its accept and from the end of each response: it ends
    /// slow-header clients and idle keep-alive connections alike.
    pub header_timeout: Duration,
    /// Connections served at once; more wait in the accept queue.
    pub max_connections: usize,
    /// Largest request body read; larger gets 413.
    pub max_body_bytes: usize,
    /// Time an authenticated client has to send its whole body; slower gets 408.
    pub body_timeout: Duration,
    /// Once shutdown begins, how long requests in flight may finish before
    /// every remaining connection is closed.
    pub shutdown_grace: Duration,
}

impl Limits {
    /// Time allowed for a request head, and for a kept-alive connection to
    /// start its next request.
    const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    /// Time allowed for a whole request body: 2 MiB at 70 KB/s.
    const BODY_TIMEOUT: Duration = Duration::from_secs(30);
    /// Grace for requests in flight at shutdown; added to the scheduler's
    /// drain it stays inside the unit's `TimeoutStopSec`.
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

    /// The limits for a configured `[server]`.
    pub fn new(config: &ServerConfig) -> Self {
        Self {
            header_timeout: Self::HEADER_TIMEOUT,
            max_connections: config.max_connections,
            max_body_bytes: config.max_body_bytes,
            body_timeout: Self::BODY_TIMEOUT,
            shutdown_grace: Self::SHUTDOWN_GRACE,
        }
    }
}

/// Pause after an accept error that is not about one connection (out of
/// file descriptors): retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(250);

/// Serves `router` on `listener` until `stop` fires, then closes the
/// listener, lets requests in flight finish for `limits.shutdown_grace`,
/// and closes whatever connections remain.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let service = TowerToHyperService::new(router);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let drain = CancellationToken::new();
    let mut connections = JoinSet::new();

    loop {
        // Reap finished connections so the set does not grow forever.
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "server: accept failed; retrying shortly");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                    }
                }
            },
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(connection(
            stream,
            permit,
            http.clone(),
            service.clone(),
            drain.clone(),
        ));
    }

    // New clients are refused from here on, not queued.
    drop(listener);
    drain.cancel();
    let finished = tokio::time::timeout(limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        let cut = connections.len();
        connections.shutdown().await;
        tracing::info!(
            connections = cut,
            "server: connections still open at the shutdown deadline were closed"
        );
    }
    Ok(())
}

/// One connection: served until it ends, or asked to finish its request in
/// flight when shutdown begins (idle connections close at once). Its slot
/// is freed when it ends.
async fn connection(
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    http: http1::Builder,
    service: TowerToHyperService<Router>,
    drain: CancellationToken,
) {
    let conn = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = drain.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "server: connection ended with an error");
    }
}

/// Errors about one incoming connection (gone before it was accepted):
/// the next accept is unaffected.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
