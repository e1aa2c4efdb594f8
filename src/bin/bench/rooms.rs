//! `rooms`: a directory of R rooms (U users creating up to 100 each), then C
//! connections paging `list_rooms` N times in all. Reports the server's CPU
//! per `list_rooms`: the Registry answers every one on a single actor, so its
//! cost bounds how many listings the whole server can serve.

use std::time::Instant;

use e2ee_chat::crypto::KeyPair;
use e2ee_chat::protocol::PlainRequest;
use e2ee_chat::protocol::{Request, ServerMsg};
use openmls_rust_crypto::OpenMlsRustCrypto;

use crate::common::{self, percentiles, BenchResult, Meter};

#[derive(Debug, Clone, clap::Args)]
pub struct RoomsOpts {
    /// Rooms in the directory.
    #[arg(long, default_value_t = 4000)]
    pub rooms: usize,
    /// `list_rooms` requests in all.
    #[arg(long, default_value_t = 4000)]
    pub lists: usize,
    /// Connections listing at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
}

const ROOMS_PER_USER: usize = 100;

pub async fn run(url: &str, pid: Option<u32>, keys: &KeyPair, o: &RoomsOpts) -> BenchResult<bool> {
    let run = hex::encode(e2ee_chat::crypto::random_bytes::<3>());
    let owners = o.rooms.div_ceil(ROOMS_PER_USER).max(1);
    let names: Vec<String> = (0..owners).map(|i| format!("r{run}-{i}")).collect();
    common::register_all(url, keys, &names).await?;
    let provider = OpenMlsRustCrypto::default();
    for (i, name) in names.iter().enumerate() {
        let (mut c, device) = common::logged_in(url, &common::identity(keys, name)).await?;
        let count = ROOMS_PER_USER.min(o.rooms - i * ROOMS_PER_USER);
        for r in 0..count {
            let name = format!("room {run} {i} {r}");
            common::create_room(&mut c, &device, &provider, &name, None, r % 10 == 0).await?;
        }
    }
    let per_worker = o.lists.div_ceil(o.concurrency.max(1));
    let meter = Meter::start(pid);
    let mut workers = Vec::new();
    for w in 0..o.concurrency.max(1) {
        let (url, name, keys) = (url.to_owned(), names[w % names.len()].clone(), keys.clone());
        workers.push(tokio::spawn(async move {
            let (mut c, _) = common::logged_in(&url, &common::identity(&keys, &name)).await?;
            let mut latencies = Vec::with_capacity(per_worker);
            for i in 0..per_worker {
                let offset = (i * 97 % 40) as u64 * 100;
                let started = Instant::now();
                let req = Request::Shared(PlainRequest::ListRooms {
                    offset: Some(offset),
                    limit: Some(100),
                });
                match c.request(&req).await {
                    Ok(ServerMsg::Rooms { .. }) => {}
                    other => return Err(format!("list_rooms: {other:?}")),
                }
                latencies.push(started.elapsed().as_micros() as u64);
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await.map_err(|e| e.to_string())??);
    }
    let (wall, cpu, _) = meter.stop();
    let n = latencies.len();
    println!(
        "rooms: {n} list_rooms (limit 100) over {} rooms in {wall:.2} s = {:.0}/s; latency {}; server CPU {} = {} per list_rooms",
        o.rooms,
        n as f64 / wall,
        percentiles(latencies),
        common::fmt_opt(cpu, "s"),
        cpu.map_or("n/a".into(), |c| format!("{:.3} ms", c * 1000.0 / n.max(1) as f64)),
    );
    Ok(true)
}
