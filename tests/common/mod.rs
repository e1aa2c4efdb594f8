//! Shared test harness: a real server on 127.0.0.1 (random port) with a real
//! SQLite store in a temp dir, fixture RSA keys (made once, outside the
//! tests, so no test waits for key generation), and logged-in devices
//! (`phone::Phone`).
#![allow(dead_code)]

pub mod cbor;
pub mod phone;

use std::path::Path;
use std::sync::OnceLock;

use e2ee_chat::config::Settings;
use e2ee_chat::crypto::KeyPair;
use e2ee_chat::protocol::ErrorCode;
use e2ee_chat::server::{self, RunningServer};

pub struct Fixtures {
    pub pairs: Vec<KeyPair>,
    pub rsa1024_public: Vec<u8>,
    pub rsa_e3_public: Vec<u8>,
}

pub fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let v = cbor::load("fixtures/keys.cbor");
        let pairs = cbor::get(&v, "pairs")
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                KeyPair::from_pkcs8_der(&cbor::bytes(p, "sign"), &cbor::bytes(p, "enc")).unwrap()
            })
            .collect();
        Fixtures {
            pairs,
            rsa1024_public: cbor::bytes(&v, "rsa1024_public"),
            rsa_e3_public: cbor::bytes(&v, "rsa_e3_public"),
        }
    })
}

/// Settings for a test server: random port, store in `dir`, generous rate limit.
pub fn settings(dir: &Path) -> Settings {
    let mut s = Settings::defaults();
    s.server.host = "127.0.0.1".into();
    s.server.port = 0;
    s.server.workers = 2;
    s.server.room_threads = 2;
    s.store.path = dir.join("chat.db");
    s.rate_limit.per_second = 100_000.0;
    s.rate_limit.burst = 100_000.0;
    // Every test client comes from 127.0.0.1.
    s.limits.max_connections_per_ip = 100_000;
    s.limits.registrations_per_ip_per_hour = 100_000;
    s
}

pub fn start(settings: Settings) -> RunningServer {
    let _ = env_logger::builder().is_test(true).try_init();
    server::start(settings, false).expect("server starts")
}

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub server: Option<RunningServer>,
}

impl TestServer {
    pub fn new() -> Self {
        Self::with(|_| {})
    }

    pub fn with(tweak: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        tweak(&mut s);
        let server = start(s);
        TestServer {
            dir,
            server: Some(server),
        }
    }

    pub fn url(&self) -> String {
        self.server.as_ref().unwrap().ws_url()
    }

    pub fn http(&self, path: &str) -> String {
        self.server.as_ref().unwrap().http_url(path)
    }

    /// Stops the server gracefully and starts it again on the same store.
    pub async fn restart(&mut self) {
        self.restart_with(|_| {}).await
    }

    pub async fn restart_with(&mut self, tweak: impl FnOnce(&mut Settings)) {
        self.server.take().unwrap().stop().await;
        let mut s = settings(self.dir.path());
        tweak(&mut s);
        self.server = Some(start(s));
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
    }
}

/// Asserts `res` is the server error `code`.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(
    res: Result<T, e2ee_chat::client::ClientError>,
    code: ErrorCode,
) {
    match res {
        Err(e) => assert_eq!(e.code(), Some(code), "expected {code:?}, got {e}"),
        Ok(v) => panic!("expected {code:?}, got success {v:?}"),
    }
}

/// The server binary with a clean environment and its store in `dir`, as
/// deployments run it (tests that need a real process: SIGTERM, SIGKILL).
pub fn server_command(dir: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_e2ee-chat-server"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("CHAT_ENV")
        .env_remove("CHAT_CONFIG")
        .env_remove("MONGODB_URI")
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env("CHAT__STORE__PATH", dir.join("chat.db"))
        .env("RUST_LOG", "warn");
    cmd
}

/// A free TCP port on 127.0.0.1 (for a server that must bind a known port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `server_command` on a free port with the rate and per-address limits
/// raised for load, logging only errors.
pub fn load_server_command(dir: &Path) -> std::process::Command {
    let mut cmd = server_command(dir);
    cmd.env("CHAT__SERVER__PORT", "0")
        .env("CHAT__RATE_LIMIT__PER_SECOND", "100000")
        .env("CHAT__RATE_LIMIT__BURST", "100000")
        .env("CHAT__LIMITS__MAX_CONNECTIONS_PER_IP", "100000")
        .env("CHAT__LIMITS__REGISTRATIONS_PER_IP_PER_HOUR", "100000")
        .env("RUST_LOG", "error");
    cmd
}

/// Spawns a server command and waits for its `listening on ADDR` line;
/// returns the process and ADDR.
pub fn spawn_listening(cmd: &mut std::process::Command) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("server starts");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("server prints its address");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .expect("a `listening on` line")
        .to_owned();
    (child, addr)
}

/// A fresh PostgreSQL database for one test run, on the server named by
/// `CHAT_TEST_POSTGRES_URL`; dropped by [`PgDatabase::drop_now`]. `Err` says
/// why there is none (for a `SKIP postgres:` line).
pub struct PgDatabase {
    pub url: String,
    admin_url: String,
    name: String,
}

impl PgDatabase {
    pub async fn create() -> Result<PgDatabase, String> {
        let admin_url = std::env::var("CHAT_TEST_POSTGRES_URL")
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or(
                "CHAT_TEST_POSTGRES_URL is not set (e.g. postgres://postgres@127.0.0.1:5432/test)",
            )?;
        let name = format!(
            "e2ee_chat_test_{}",
            hex::encode(e2ee_chat::crypto::random_bytes::<6>())
        );
        let client = pg_connect(&admin_url).await?;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(|e| format!("cannot create a test database: {e}"))?;
        let mut url = url::Url::parse(&admin_url).map_err(|e| e.to_string())?;
        url.set_path(&format!("/{name}"));
        Ok(PgDatabase {
            url: url.to_string(),
            admin_url,
            name,
        })
    }

    pub async fn drop_now(self) {
        if let Ok(client) = pg_connect(&self.admin_url).await {
            let _ = client
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .await;
        }
    }
}

pub async fn pg_connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    tokio::spawn(conn);
    Ok(client)
}

/// A minimal HTTP GET over a raw socket (keeps the dev-dependencies small).
pub async fn http_get(url: &str) -> String {
    http_get_with(url, "").await
}

/// [`http_get`] with extra header lines (each ending in `\r\n`).
pub async fn http_get_with(url: &str, headers: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
