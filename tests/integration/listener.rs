//! The daemon's HTTP listener against clients that never finish: they must
//! not keep `synchro run` alive past its stop deadline, nor make it read a
//! stranger's body. (The limits one by one, with short timeouts, are tested
//! in `src/server/tests.rs`.)

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

const TOKEN: &str = "hook-secret";

async fn connect(port: u16, first_bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(first_bytes).await.expect("write");
    s
}

/// The status of the first response on `s`, read within 5 s.
async fn status(s: &mut TcpStream) -> u16 {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let read = async {
        while !buf.windows(2).any(|w| w == b"\r\n") {
            let n = s.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed without a response");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("a response within 5 s");
    let line = String::from_utf8_lossy(&buf);
    line.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not a status line: {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_promptly_although_clients_hold_half_sent_requests() {
    let sim = simulator().await;
    let mut content = ContentSource::new("acme", "translations");
    content.webhook_token = Some(TOKEN);
    let setup = Setup::content(&sim, &[content]);
    let port = setup.use_free_port();
    let mut child = setup.spawn(&["run"]);
    let ready = format!("http://127.0.0.1:{port}/readyz");
    wait_until(Duration::from_secs(30), "readyz 200", || async {
        reqwest::get(&ready)
            .await
            .is_ok_and(|r| r.status().as_u16() == 200)
    })
    .await;

    // A stranger's 1 MB PUT is refused from its head, body never sent.
    let hook = "/webhooks/content/acme/translations";
    let mut stranger = connect(
        port,
        format!("PUT {hook} HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status(&mut stranger).await, 401);

    // Clients that never finish: heads cut halfway, an authenticated body
    // cut halfway, and connections idle after a request or from the start.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(port, b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow:").await);
    }
    held.push(
        connect(
            port,
            format!(
                "PUT {hook} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\n\
                 Content-Length: 1000\r\n\r\n{{\"type\":"
            )
            .as_bytes(),
        )
        .await,
    );
    let mut idle = connect(port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(status(&mut idle).await, 200);
    held.push(idle);
    held.push(connect(port, b"").await);

    let began = Instant::now();
    signal(&child, "TERM");
    // No sync runs, so the drain is instant; the listener's grace is 5 s.
    let deadline = began + Duration::from_secs(12);
    let code = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s.code();
        }
        assert!(
            Instant::now() < deadline,
            "still running 12 s after SIGTERM with {} clients connected:\n{}",
            held.len(),
            setup.spawned_stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(code, Some(0), "{}", setup.spawned_stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_limits_are_configurable_and_bad_values_exit_78_naming_the_key() {
    let sim = simulator().await;
    let setup = Setup::new(&sim, &[]);
    let listen = "listen = \"127.0.0.1:0\"";
    setup.edit_config(
        listen,
        &format!("{listen}\nmax_connections = 100\nmax_body_bytes = 1048576"),
    );
    let out = setup.run(&["check"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    setup.edit_config("max_connections = 100", "max_connections = 0");
    setup.edit_config("max_body_bytes = 1048576", "max_body_bytes = \"2MB\"");
    let out = setup.run(&["check"]).await;
    assert_eq!(out.status.code(), Some(78));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(
        all.contains("server.max_connections") && all.contains("between 1 and 32768"),
        "{all}"
    );
    assert!(
        all.contains("server.max_body_bytes") && all.contains("integer"),
        "{all}"
    );
}
