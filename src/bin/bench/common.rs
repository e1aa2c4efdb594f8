//! Helpers every scenario shares: one key pair for all bench users, logged-in
//! devices and new rooms, the server's CPU and memory from /proc, /metrics
//! counters, latency percentiles and report lines.

use std::time::{Duration, Instant};

use e2ee_chat::client::conn::{Conn, IdentityPair};
use e2ee_chat::client::mls::Device;
use e2ee_chat::crypto::KeyPair;
use e2ee_chat::protocol::{ErrorCode, PlainRequest};
use e2ee_chat::protocol::{Request, RoomSummary, ServerMsg};
use openmls::prelude::MlsGroup;
use openmls_rust_crypto::OpenMlsRustCrypto;
use serde_bytes::ByteBuf;

pub type BenchResult<T> = Result<T, String>;

/// All bench users share one key pair: the server does not care, and set-up
/// stays fast (one key generation per run).
pub fn shared_keys() -> KeyPair {
    KeyPair::generate(2048).expect("key generation")
}

/// A bench user: its name and the shared identity key.
pub fn identity(keys: &KeyPair, name: &str) -> IdentityPair {
    IdentityPair::new(name, keys.sign.clone())
}

fn err(what: &str) -> impl Fn(e2ee_chat::client::ClientError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Registers `id` on `c` (an existing name is fine).
async fn register(c: &mut Conn, id: &IdentityPair) -> BenchResult<()> {
    match c.register(id).await {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some(ErrorCode::UsernameTaken) => Ok(()),
        Err(e) => Err(format!("register {}: {e}", id.username)),
    }
}

/// Connects and logs in as a new device of `id` (registered before).
pub async fn device_login(url: &str, id: &IdentityPair) -> BenchResult<(Conn, Device)> {
    let device = Device::new(&id.username, |m| id.sign(m));
    let mut c = Conn::connect(url).await.map_err(err("connect"))?;
    c.timeout = Duration::from_secs(60);
    c.login(id, &device.certificate)
        .await
        .map_err(err("login"))?;
    Ok((c, device))
}

/// Connects, registers (an existing name is fine) and logs in as a new
/// device.
pub async fn logged_in(url: &str, id: &IdentityPair) -> BenchResult<(Conn, Device)> {
    let mut c = Conn::connect(url).await.map_err(err("connect"))?;
    register(&mut c, id).await?;
    drop(c);
    device_login(url, id).await
}

/// Registers many users over a few parallel connections.
pub async fn register_all(url: &str, keys: &KeyPair, names: &[String]) -> BenchResult<()> {
    let chunks: Vec<Vec<String>> = names
        .chunks(names.len().div_ceil(8).max(1))
        .map(|c| c.to_vec())
        .collect();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let (url, keys) = (url.to_owned(), keys.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::connect(&url).await.map_err(|e| e.to_string())?;
            for name in chunk {
                register(&mut c, &identity(&keys, &name)).await?;
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// A new room made by `device` on `c`, with its epoch-0 group: the room
/// and the creator's group.
pub async fn create_room(
    c: &mut Conn,
    device: &Device,
    provider: &OpenMlsRustCrypto,
    name: &str,
    password: Option<&str>,
    hidden: bool,
) -> BenchResult<(RoomSummary, MlsGroup)> {
    let (group, objects) = device
        .create_group(provider, rand::random())
        .map_err(|e| e.to_string())?;
    let joined = c
        .request(&Request::CreateRoom {
            name: name.to_owned(),
            password: password.map(str::to_owned),
            hidden: hidden.then_some(true),
            group_info: ByteBuf::from(objects.group_info),
            ratchet_tree: ByteBuf::from(objects.ratchet_tree),
        })
        .await
        .map_err(err("create_room"))?;
    match joined {
        ServerMsg::Joined { room, .. } => Ok((room, group)),
        other => Err(format!("create_room: {other:?}")),
    }
}

/// Joins a room (as a member: without a leaf in its group).
pub async fn join_room(c: &mut Conn, room_id: &str, password: Option<&str>) -> BenchResult<()> {
    c.request(&Request::Shared(PlainRequest::JoinRoom {
        room_id: room_id.to_owned(),
        password: password.map(str::to_owned),
    }))
    .await
    .map(|_| ())
    .map_err(err("join_room"))
}

/// CPU seconds (user + system) and resident memory of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub cpu_secs: f64,
    pub rss_bytes: u64,
}

/// Other processes of the server under test (a cluster): their CPU and
/// memory count with the first one's, and `fanout` spreads its members over
/// their URLs.
pub static MORE_PIDS: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();
pub static MORE_URLS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// The URL the `i`-th connection uses: round-robin over `url` and MORE_URLS.
pub fn spread(url: &str, i: usize) -> String {
    let more = MORE_URLS.get().map_or(&[][..], Vec::as_slice);
    match i % (more.len() + 1) {
        0 => url.to_owned(),
        k => more[k - 1].clone(),
    }
}

/// The server's usage, summed over every process of it.
pub fn usage(pid: Option<u32>) -> Option<Usage> {
    let mut total = usage_of(pid?)?;
    for more in MORE_PIDS.get().into_iter().flatten() {
        let u = usage_of(*more)?;
        total.cpu_secs += u.cpu_secs;
        total.rss_bytes += u.rss_bytes;
    }
    Some(total)
}

fn usage_of(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(Usage {
        cpu_secs: ticks / clock_ticks(),
        rss_bytes: rss_kib * 1024,
    })
}

fn clock_ticks() -> f64 {
    // USER_HZ is 100 on every Linux this runs on; getconf says so if present.
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Reads one counter from the server's /metrics, with the token in
/// `CHAT__SERVER__METRICS_TOKEN` (scripts/bench.sh sets it for the server
/// and the bench alike).
pub async fn metric(ws_url: &str, name: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = ws_url.strip_prefix("ws://")?.split('/').next()?.to_owned();
    let token = std::env::var("CHAT__SERVER__METRICS_TOKEN").unwrap_or_default();
    let mut s = tokio::net::TcpStream::connect(&host).await.ok()?;
    s.write_all(
        format!(
            "GET /metrics HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
             Connection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    body.lines()
        .find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// p50, p95, p99 and max of latencies in microseconds.
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub count: usize,
}

pub fn percentiles(mut micros: Vec<u64>) -> Percentiles {
    micros.sort_unstable();
    let at = |q: f64| {
        if micros.is_empty() {
            0.0
        } else {
            micros[((micros.len() as f64 - 1.0) * q).round() as usize] as f64 / 1000.0
        }
    };
    Percentiles {
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
        max: at(1.0),
        count: micros.len(),
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n={})",
            self.p50, self.p95, self.p99, self.max, self.count
        )
    }
}

/// Measures the server around a timed phase.
pub struct Meter {
    pid: Option<u32>,
    before: Option<Usage>,
    started: Instant,
}

impl Meter {
    pub fn start(pid: Option<u32>) -> Self {
        Meter {
            pid,
            before: usage(pid),
            started: Instant::now(),
        }
    }

    /// (wall seconds, server CPU seconds, server RSS bytes at the end)
    pub fn stop(&self) -> (f64, Option<f64>, Option<u64>) {
        let wall = self.started.elapsed().as_secs_f64();
        let after = usage(self.pid);
        let cpu = match (self.before, after) {
            (Some(b), Some(a)) => Some(a.cpu_secs - b.cpu_secs),
            _ => None,
        };
        (wall, cpu, after.map(|a| a.rss_bytes))
    }
}

pub fn fmt_opt(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.3} {unit}"))
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The store's commit counters from /metrics, to report group-commit batch
/// sizes and commit latency over a phase.
#[derive(Debug, Clone, Copy)]
pub struct CommitStats {
    commits: Option<f64>,
    writes: Option<f64>,
    secs: Option<f64>,
}

impl CommitStats {
    pub async fn snapshot(url: &str) -> Self {
        CommitStats {
            commits: metric(url, "chat_store_commits_total").await,
            writes: metric(url, "chat_store_committed_writes_total").await,
            secs: metric(url, "chat_store_commit_seconds_total").await,
        }
    }

    /// (mean writes per commit, mean commit time in ms) since `before`.
    pub fn since(&self, before: &CommitStats) -> (Option<f64>, Option<f64>) {
        let delta = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
        let commits = delta(before.commits, self.commits).map(|c| c.max(1.0));
        let writes = delta(before.writes, self.writes);
        let secs = delta(before.secs, self.secs);
        (
            writes.zip(commits).map(|(w, c)| w / c),
            secs.zip(commits).map(|(s, c)| s * 1000.0 / c),
        )
    }

    pub fn describe(&self, before: &CommitStats) -> String {
        let (batch, ms) = self.since(before);
        format!(
            "mean commit batch {}, mean commit {}",
            batch.map_or("n/a".into(), |b| format!("{b:.1} writes")),
            ms.map_or("n/a".into(), |m| format!("{m:.2} ms")),
        )
    }
}
