//! `commits`: what a room's group costs on the wire, against a
//! server. One room grows by external joins, one new
//! device at a time (login, `join_room`, `group_state`, the external commit,
//! `committed`), to each size in `--members`. The last joins before each
//! size are timed on the client (the whole join, and openmls's part of it);
//! at each size the device that just joined makes `--commits` update
//! commits, timed on the client and measured as the server's CPU around
//! them (check, merge, the group's row written, the entry stored and fanned
//! out). The in-process numbers of the same work are `mls`'s.

use std::time::Instant;

use clap::Args;
use e2ee_chat::client::conn::{Conn, IdentityPair};
use e2ee_chat::crypto::KeyPair;
use e2ee_chat::protocol::PlainRequest;
use e2ee_chat::protocol::{Request, ServerMsg};
use openmls_rust_crypto::OpenMlsRustCrypto;

use crate::common::device_login;
use crate::common::{self, BenchResult, Meter};

#[derive(Args, Clone)]
pub struct CommitsOpts {
    /// Room sizes to measure at (the room grows to the largest).
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    pub members: Vec<usize>,
    /// Update commits timed at each size (the server's CPU is read in
    /// 10 ms ticks: enough of them to read it to 0.1 ms).
    #[arg(long, default_value_t = 100)]
    pub commits: usize,
    /// Joins timed before each size is reached.
    #[arg(long, default_value_t = 10)]
    pub timed_joins: usize,
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

pub async fn run(
    url: &str,
    pid: Option<u32>,
    keys: &KeyPair,
    o: &CommitsOpts,
) -> BenchResult<bool> {
    let run = hex::encode(e2ee_chat::crypto::random_bytes::<3>());
    let max = o.members.iter().copied().max().unwrap_or(2).max(2);
    let ids: Vec<IdentityPair> = (0..max)
        .map(|i| IdentityPair::new(&format!("c{run}-{i}"), keys.sign.clone()))
        .collect();
    let mut registrar = Conn::connect(url).await.map_err(|e| e.to_string())?;
    for id in &ids {
        registrar.register(id).await.map_err(|e| e.to_string())?;
    }
    let (mut owner, owner_dev) = device_login(url, &ids[0]).await?;
    let provider = OpenMlsRustCrypto::default();
    let name = format!("commits {run}");
    let (room, _) =
        crate::common::create_room(&mut owner, &owner_dev, &provider, &name, None, false).await?;
    let room_id = room.room_id;
    let (mut join_ms, mut mls_ms) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for (i, id) in ids.iter().enumerate().skip(1) {
        let size = i + 1;
        let (mut c, device) = device_login(url, id).await?;
        c.request(&Request::Shared(PlainRequest::JoinRoom {
            room_id: room_id.clone(),
            password: None,
        }))
        .await
        .map_err(|e| format!("join: {e}"))?;
        let t = Instant::now();
        let (_, group_info, tree) = c.group_state(&room_id).await.map_err(|e| e.to_string())?;
        let provider = OpenMlsRustCrypto::default();
        let m = Instant::now();
        let (mut group, join) = device
            .join_external(&provider, &group_info, &tree)
            .map_err(|e| e.to_string())?;
        let mls = ms(m);
        match c.commit(&room_id, &join).await {
            Ok(ServerMsg::Committed { .. }) => {}
            other => return Err(format!("external commit at {size}: {other:?}")),
        }
        if o.members
            .iter()
            .any(|&n| size <= n && size + o.timed_joins > n)
        {
            join_ms.push(ms(t));
            mls_ms.push(mls);
        }
        if !o.members.contains(&size) {
            continue;
        }
        let meter = Meter::start(pid);
        let t = Instant::now();
        let mut commit_bytes = 0;
        for _ in 0..o.commits {
            let objects = device
                .commit(&provider, &mut group, &[])
                .map_err(|e| e.to_string())?;
            commit_bytes = objects.commit.len();
            match c.commit(&room_id, &objects).await {
                Ok(ServerMsg::Committed { .. }) => group
                    .merge_pending_commit(&provider)
                    .map_err(|e| format!("merge: {e:?}"))?,
                other => return Err(format!("update commit at {size}: {other:?}")),
            }
        }
        let per_commit = ms(t) / o.commits as f64;
        let (_, cpu, rss) = meter.stop();
        println!(
            "commits {size} members: external join {:.1} ms on the client (openmls {:.1} ms; \
             mean of the last {}), ratchet tree {} B; update commit {:.2} ms on the client, \
             {commit_bytes} B; server CPU per commit {}; server RSS {} (grown in {:.0} s)",
            mean(&join_ms),
            mean(&mls_ms),
            join_ms.len(),
            tree.len(),
            per_commit,
            common::fmt_opt(cpu.map(|c| c * 1e3 / o.commits as f64), "ms"),
            rss.map_or("n/a".into(), |b| format!("{:.1} MiB", common::mib(b))),
            started.elapsed().as_secs_f64(),
        );
        join_ms.clear();
        mls_ms.clear();
    }
    Ok(true)
}
