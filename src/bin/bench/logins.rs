//! `logins`: N registered users log in at once over pre-opened connections,
//! C at a time, each as its device (recorded before the timed phase). Reports logins/s, login latency and the server's CPU per
//! login (the client's PSS signing, ~1.5 ms each, shares the machine, so
//! server CPU per login is the number that speaks for the server).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use e2ee_chat::crypto::KeyPair;
use tokio::sync::Mutex;

use crate::common::{self, percentiles, BenchResult, Meter};

#[derive(Debug, Clone, clap::Args)]
pub struct LoginOpts {
    /// Users (and connections).
    #[arg(long, default_value_t = 2000)]
    pub users: usize,
    /// Logins in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

/// The timed phase: `login` over every item (a user and its open
/// connection), `concurrency` at a time, and the report line.
async fn timed<T, F, Fut>(
    label: &str,
    pid: Option<u32>,
    items: Vec<T>,
    o: &LoginOpts,
    login: F,
) -> BenchResult<bool>
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = (bool, T)> + Send,
{
    let queue = Arc::new(Mutex::new(items));
    let failures = Arc::new(AtomicUsize::new(0));
    let meter = Meter::start(pid);
    let mut workers = Vec::new();
    for _ in 0..o.concurrency.max(1) {
        let (queue, failures, login) = (queue.clone(), failures.clone(), login.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut done = Vec::new();
            loop {
                let Some(item) = queue.lock().await.pop() else {
                    break;
                };
                let started = Instant::now();
                let (ok, item) = login(item).await;
                if ok {
                    latencies.push(started.elapsed().as_micros() as u64);
                } else {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                done.push(item);
            }
            (latencies, done)
        }));
    }
    let mut latencies = Vec::new();
    let mut keep = Vec::new();
    for w in workers {
        let (l, d) = w.await.map_err(|e| e.to_string())?;
        latencies.extend(l);
        keep.extend(d);
    }
    let (wall, cpu, _) = meter.stop();
    let n = latencies.len();
    let failed = failures.load(Ordering::Relaxed);
    println!(
        "{label}: {n} in {wall:.2} s = {:.0} logins/s (concurrency {}); latency {}; server CPU {} = {} per login; failures {failed}",
        n as f64 / wall,
        o.concurrency,
        percentiles(latencies),
        common::fmt_opt(cpu, "s"),
        cpu.map_or("n/a".into(), |c| format!("{:.3} ms", c * 1000.0 / n.max(1) as f64)),
    );
    drop(keep);
    Ok(failed == 0 && n == o.users)
}

/// The scenario: `login` then `prove` with the identity key's signature
/// and the device's certificate, which the server checks (exact encoding, RSA-PSS) and looks
/// up among the user's devices. Every user's device is recorded by a first
/// login before the timed phase, so the timed logins are the everyday kind
/// (a known device).
pub async fn run(url: &str, pid: Option<u32>, keys: &KeyPair, o: &LoginOpts) -> BenchResult<bool> {
    use e2ee_chat::client::conn::{Conn, IdentityPair};
    use e2ee_chat::client::mls::Device;
    let run = hex::encode(e2ee_chat::crypto::random_bytes::<3>());
    let users: Vec<(IdentityPair, Vec<u8>)> = (0..o.users)
        .map(|i| {
            let id = IdentityPair::new(&format!("v{run}-{i}"), keys.sign.clone());
            let device = Device::new(&id.username, |m| id.sign(m));
            (id, device.certificate)
        })
        .collect();
    // Set-up: register and record every device, a few connections at a time.
    for chunk in users.chunks(users.len().div_ceil(8).max(1)) {
        let mut c = Conn::connect(url).await.map_err(|e| e.to_string())?;
        for (id, _) in chunk {
            c.register(id).await.map_err(|e| format!("register: {e}"))?;
        }
        drop(c);
        for (id, cert) in chunk {
            let mut c = Conn::connect(url).await.map_err(|e| e.to_string())?;
            c.login(id, cert)
                .await
                .map_err(|e| format!("first login: {e}"))?;
        }
    }
    let mut conns = Vec::with_capacity(o.users);
    for _ in 0..o.users {
        conns.push(
            Conn::connect(url)
                .await
                .map_err(|e| format!("connect: {e}"))?,
        );
    }
    let items: Vec<_> = users.into_iter().zip(conns).collect();
    timed(
        "logins",
        pid,
        items,
        o,
        |((id, cert), mut c): ((IdentityPair, Vec<u8>), Conn)| async move {
            let ok = c.login(&id, &cert).await.is_ok();
            (ok, ((id, cert), c))
        },
    )
    .await
}
