//! The server binary as deployments run it: `PORT` set as on Heroku (the
//! Procfile's `web:` line), `healthcheck` as the Dockerfile's HEALTHCHECK,
//! SIGTERM for a graceful stop, and bad configuration failing fast.
//!
//! It runs the same binary target cargo built for the tests (not a second,
//! release build), so CI compiles everything once.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_e2ee-chat-server");

use common::free_port;

#[tokio::test]
async fn runs_like_the_procfile_with_port_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Off loopback the server needs its public name (issue 20 item 13).
    let name = format!("127.0.0.1:{port}");
    let (mut child, addr) = common::spawn_listening(
        common::server_command(dir.path())
            .env("PORT", port.to_string())
            .env("CHAT__SERVER__PUBLIC_HOSTS", &name),
    );
    assert_eq!(addr, format!("0.0.0.0:{port}"), "PORT binds 0.0.0.0");

    let url = format!("ws://127.0.0.1:{port}/ws");
    let mut alice = common::phone::Phone::register(&url, "alice", 0).await;
    alice.create("Deployed").await;
    alice.say("from the binary").await;

    // The Dockerfile's HEALTHCHECK command.
    let status = Command::new(BIN)
        .env("PORT", port.to_string())
        .env("CHAT__SERVER__PUBLIC_HOSTS", &name)
        .arg("healthcheck")
        .status()
        .unwrap();
    assert!(status.success());

    drop(alice);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "graceful exit on SIGTERM: {status}");

    // Everything acknowledged is on disk.
    let db = rusqlite::Connection::open(dir.path().join("chat.db")).unwrap();
    let n: i64 = db
        .query_row("SELECT COUNT(*) FROM entries", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    // And the health check now fails: nothing listens.
    let status = Command::new(BIN)
        .env("PORT", port.to_string())
        .env("CHAT__SERVER__PUBLIC_HOSTS", &name)
        .arg("healthcheck")
        .status()
        .unwrap();
    assert!(!status.success());
}

fn start_fails(envs: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = common::server_command(dir.path());
    cmd.env("CHAT__SERVER__PORT", "0");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(2), "config errors exit with 2");
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return err;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started despite {envs:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_config_fails_fast_naming_the_key() {
    let err = start_fails(&[("CHAT__LIMITS__MAX_FRAME_BYTES", "lots")]);
    assert!(err.contains("max_frame_bytes"), "{err}");
    let err = start_fails(&[("CHAT__SERVER__BOGUS", "1")]);
    assert!(err.contains("bogus"), "{err}");
    let err = start_fails(&[("CHAT__RATE_LIMIT__BURST", "0")]);
    assert!(err.contains("rate_limit.burst"), "{err}");
    let err = start_fails(&[("CHAT_CONFIG", "/nonexistent/chat.toml")]);
    assert!(err.contains("nonexistent"), "{err}");
    // On a public address without its public name (the production config,
    // or PORT as on Heroku), a relayed login would work: refused at start.
    let err = start_fails(&[("CHAT__SERVER__HOST", "0.0.0.0")]);
    assert!(err.contains("server.public_hosts"), "{err}");
    let err = start_fails(&[("CHAT_ENV", "production"), ("CHAT__STORE__PATH", "x.db")]);
    assert!(err.contains("server.public_hosts"), "{err}");
    // A deployment still set to protocol version 2 is told it is gone.
    let err = start_fails(&[("CHAT__PROTOCOL__VERSION", "2")]);
    assert!(
        err.contains("protocol.version") && err.contains("version 2 is no longer served"),
        "{err}"
    );
}

#[test]
fn unreachable_mongodb_fails_at_start_with_a_clear_message() {
    // Nothing listens on port 1 of the loopback: the driver's server
    // selection gives up after the short timeout and the server exits.
    let dir = tempfile::tempdir().unwrap();
    let out = common::server_command(dir.path())
        .env("CHAT__SERVER__PORT", "0")
        .env(
            "MONGODB_URI",
            "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300&connectTimeoutMS=300",
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot start") && err.contains("store unavailable"),
        "{err}"
    );
}
