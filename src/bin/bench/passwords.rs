//! `passwords`: a wrong-password flood. U users fire J `join_room` attempts
//! with wrong passwords at R password rooms, all at once; reports how many
//! were checked (hashed) and refused, and the server's resident memory
//! before, at its peak during the flood, at the end, and after a quiet
//! while (issue 20 item 9: Argon2's 19 MiB per hash used to stay with the
//! allocator).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2ee_chat::crypto::KeyPair;
use e2ee_chat::protocol::{ErrorCode, PlainRequest};
use e2ee_chat::protocol::{Request, ServerMsg};

use crate::common::{self, BenchResult};

#[derive(Debug, Clone, clap::Args)]
pub struct PasswordOpts {
    /// Users guessing (each on its own connection).
    #[arg(long, default_value_t = 10)]
    pub users: usize,
    /// Wrong-password joins in all.
    #[arg(long, default_value_t = 300)]
    pub joins: usize,
    /// Password rooms they aim at.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Each user waits for each answer before the next attempt (so every
    /// attempt the budgets allow is hashed), instead of sending all at once.
    #[arg(long)]
    pub paced: bool,
    /// Seconds to wait after the flood before the last RSS reading.
    #[arg(long, default_value_t = 60)]
    pub idle_secs: u64,
}

pub async fn run(
    url: &str,
    pid: Option<u32>,
    keys: &KeyPair,
    o: &PasswordOpts,
) -> BenchResult<bool> {
    let run = hex::encode(e2ee_chat::crypto::random_bytes::<3>());
    let (mut owner, device) =
        common::logged_in(url, &common::identity(keys, &format!("p{run}-owner"))).await?;
    let provider = openmls_rust_crypto::OpenMlsRustCrypto::default();
    let mut rooms = Vec::new();
    for i in 0..o.rooms.max(1) {
        let name = format!("pw {run} {i}");
        let (room, _) =
            common::create_room(&mut owner, &device, &provider, &name, Some("right"), false)
                .await?;
        rooms.push(room.room_id);
    }
    let mut guessers = Vec::new();
    for u in 0..o.users.max(1) {
        let id = common::identity(keys, &format!("p{run}-{u}"));
        guessers.push(common::logged_in(url, &id).await?.0);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = common::usage(pid);
    let peak = Arc::new(AtomicU64::new(before.map_or(0, |u| u.rss_bytes)));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                if let Some(u) = common::usage(pid) {
                    peak.fetch_max(u.rss_bytes, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let per_user = o.joins.div_ceil(guessers.len());
    let started = std::time::Instant::now();
    let tasks: Vec<_> = guessers
        .into_iter()
        .enumerate()
        .map(|(u, mut c)| {
            let rooms = rooms.clone();
            let paced = o.paced;
            tokio::spawn(async move {
                if paced {
                    let (mut checked, mut limited, mut other) = (0usize, 0usize, 0usize);
                    for k in 0..per_user {
                        let room = &rooms[(u + k) % rooms.len()];
                        match common::join_room(&mut c, room, Some(&format!("wrong-{k}"))).await {
                            Err(e) if e.contains("WrongPassword") => checked += 1,
                            Err(e) if e.contains("RateLimited") => limited += 1,
                            _ => other += 1,
                        }
                    }
                    return Ok::<_, String>((checked, limited, other));
                }
                for k in 0..per_user {
                    let req = Request::Shared(PlainRequest::JoinRoom {
                        room_id: rooms[(u + k) % rooms.len()].clone(),
                        password: Some(format!("wrong-{k}")),
                    });
                    c.send_raw(req.encode(Some(k as u64 + 1)))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                let (mut checked, mut limited, mut other) = (0usize, 0usize, 0usize);
                while checked + limited + other < per_user {
                    if let ServerMsg::Error {
                        id: Some(_), code, ..
                    } = c.read().await.map_err(|e| e.to_string())?
                    {
                        match code {
                            ErrorCode::WrongPassword => checked += 1,
                            ErrorCode::RateLimited => limited += 1,
                            _ => other += 1,
                        }
                    }
                }
                Ok::<_, String>((checked, limited, other))
            })
        })
        .collect();
    let (mut checked, mut limited, mut other) = (0, 0, 0);
    for t in tasks {
        let (c, l, x) = t.await.map_err(|e| e.to_string())??;
        checked += c;
        limited += l;
        other += x;
    }
    let took = started.elapsed();
    let end = common::usage(pid);
    tokio::time::sleep(Duration::from_secs(o.idle_secs)).await;
    let idle = common::usage(pid);
    done.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let mib = |u: Option<common::Usage>| {
        u.map_or("?".into(), |u| format!("{:.1}", common::mib(u.rss_bytes)))
    };
    println!(
        "passwords: {} wrong-password joins from {} users into {} rooms in {:.1}s: {checked} checked, {limited} rate_limited, {other} other; server RSS {} MiB before, peak {:.1}, {} at the end, {} after {}s idle",
        per_user * o.users.max(1),
        o.users.max(1),
        rooms.len(),
        took.as_secs_f64(),
        mib(before),
        common::mib(peak.load(Ordering::Relaxed)),
        mib(end),
        mib(idle),
        o.idle_secs,
    );
    Ok(other == 0)
}
