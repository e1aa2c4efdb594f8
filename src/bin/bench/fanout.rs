//! `fanout`: R rooms × M members, S senders per room, at a target rate (or
//! as fast as a per-sender window allows). Envelopes are real (AES-GCM, an
//! RSA-OAEP wrap, an RSA-PSS signature) and prepared before the timed phase.
//! Every member connection records when each message reaches it; latency is
//! send→deliver by the bench's clock, keyed by the index carried in msg_id.
//!
//! The same engine drives the baseline relay with the same frames (the bytes
//! the server would deliver), so the two runs compare like for like.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2ee_chat::client::seal_parts;
use e2ee_chat::crypto::KeyPair;
use e2ee_chat::protocol::{peek_type, MessageFrame, Request};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::common::{self, percentiles, BenchResult, Meter, Percentiles};

#[derive(Debug, Clone, clap::Args)]
pub struct FanoutOpts {
    /// Rooms.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Members per room (each one connection).
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// Senders per room (the first members).
    #[arg(long, default_value_t = 4)]
    pub senders: usize,
    /// Messages per second over all rooms; 0 = as fast as the window allows.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Messages in all (spread over rooms and senders).
    #[arg(long, default_value_t = 5000)]
    pub messages: usize,
    /// Messages a sender may have in flight (until its own copy comes back).
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Plaintext size in bytes.
    #[arg(long, default_value_t = 100)]
    pub text_bytes: usize,
}

pub struct FanoutReport {
    pub target: &'static str,
    pub deliveries: usize,
    pub expected: usize,
    pub wall_secs: f64,
    pub latency: Percentiles,
    pub server_cpu_secs: Option<f64>,
    pub server_rss: Option<u64>,
    pub errors: usize,
}

impl FanoutReport {
    pub fn per_sec(&self) -> f64 {
        self.deliveries as f64 / self.wall_secs.max(1e-9)
    }

    pub fn print(&self) {
        println!(
            "fanout[{}]: {} of {} deliveries in {:.2} s = {:.0} deliveries/s; latency {}; server CPU {}; server RSS {}; errors {}",
            self.target,
            self.deliveries,
            self.expected,
            self.wall_secs,
            self.per_sec(),
            self.latency,
            common::fmt_opt(self.server_cpu_secs, "s"),
            self.server_rss.map_or("n/a".into(), |r| format!("{:.1} MiB", common::mib(r))),
            self.errors,
        );
    }
}

const MSG_ID_KEY: [u8; 8] = [0x66, b'm', b's', b'g', b'_', b'i', b'd', 0x50];

fn message_index(frame: &[u8]) -> Option<usize> {
    let at = frame
        .windows(MSG_ID_KEY.len())
        .position(|w| w == MSG_ID_KEY)?
        + MSG_ID_KEY.len();
    let idx = u64::from_be_bytes(frame.get(at..at + 8)?.try_into().ok()?);
    Some(idx as usize)
}

pub struct Prepared {
    /// Frame to send, per message index.
    pub frames: Vec<Vec<u8>>,
    /// Sending connection, per message index.
    pub owner: Vec<usize>,
    /// Message indexes per sending connection, in order.
    pub per_sender: Vec<(usize, Vec<usize>)>,
}

impl Prepared {
    /// The frames (by message index) and who sends each: (index, sending
    /// connection), in sending order.
    pub fn new(frames: Vec<Vec<u8>>, plan: impl Iterator<Item = (usize, usize)>) -> Prepared {
        let mut owner = vec![0; frames.len()];
        let mut per_sender: Vec<(usize, Vec<usize>)> = Vec::new();
        for (idx, conn) in plan {
            owner[idx] = conn;
            match per_sender.iter_mut().find(|(c, _)| *c == conn) {
                Some((_, list)) => list.push(idx),
                None => per_sender.push((conn, vec![idx])),
            }
        }
        Prepared {
            frames,
            owner,
            per_sender,
        }
    }
}

/// Signs and seals every message up front, on all cores.
fn prepare(
    keys: &KeyPair,
    room_ids: &[String],
    members: &[Vec<String>],
    o: &FanoutOpts,
    relay: bool,
) -> Prepared {
    let senders = o.senders.min(o.members).max(1);
    let per_room = o.messages / o.rooms;
    let total = per_room * o.rooms;
    let mut plan = Vec::with_capacity(total); // (idx, room, sender connection)
    for r in 0..o.rooms {
        for j in 0..per_room {
            plan.push((r * per_room + j, r, r * o.members + j % senders));
        }
    }
    let text = "x".repeat(o.text_bytes);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = plan.len().div_ceil(threads).max(1);
    let mut frames: Vec<Vec<u8>> = vec![Vec::new(); total];
    std::thread::scope(|scope| {
        let handles: Vec<_> = plan
            .chunks(chunk)
            .map(|part| {
                let text = &text;
                scope.spawn(move || {
                    part.iter()
                        .map(|&(idx, r, _)| {
                            let room_id = &room_ids[r];
                            let mut msg_id = [0u8; 16];
                            msg_id[..8].copy_from_slice(&(idx as u64).to_be_bytes());
                            msg_id[8..].copy_from_slice(&e2ee_chat::crypto::random_bytes::<8>());
                            let (mut body, aes) = seal_parts(keys, room_id, text, msg_id);
                            // Everyone shares the enc key, so one real wrap serves all members.
                            let wrapped = serde_bytes::ByteBuf::from(
                                e2ee_chat::crypto::wrap_key(&keys.enc_der, &aes).expect("wrap"),
                            );
                            body.keys = members[r]
                                .iter()
                                .map(|m| (m.clone(), wrapped.clone()))
                                .collect();
                            let frame = if relay {
                                let (sealed, _) = body.into_sealed(members[r][0].clone());
                                MessageFrame::new(room_id, idx as u64 + 1, 0, &sealed)
                                    .for_recipient(&wrapped)
                            } else {
                                Request::Send(body).encode(Some(idx as u64))
                            };
                            (idx, frame)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (idx, frame) in h.join().expect("prepare thread") {
                frames[idx] = frame;
            }
        }
    });
    Prepared::new(frames, plan.iter().map(|&(idx, _, conn)| (idx, conn)))
}

/// Runs fan-out against the chat server at `url`.
pub async fn run_server(
    url: &str,
    pid: Option<u32>,
    keys: &KeyPair,
    o: &FanoutOpts,
) -> BenchResult<FanoutReport> {
    let run = hex::encode(e2ee_chat::crypto::random_bytes::<3>());
    let members: Vec<Vec<String>> = (0..o.rooms)
        .map(|r| (0..o.members).map(|i| format!("f{run}-{r}-{i}")).collect())
        .collect();
    common::register_all(url, keys, &members.concat()).await?;
    let mut conns = Vec::new();
    let mut room_ids = Vec::new();
    for (r, names) in members.iter().enumerate() {
        let mut owner = common::logged_in(url, &common::identity(keys, &names[0])).await?;
        let (room, _) = owner
            .create_room(&format!("bench {run} {r}"), None, false)
            .await
            .map_err(|e| format!("create room: {e}"))?;
        conns.push(owner);
        for (i, name) in names.iter().enumerate().skip(1) {
            let at = common::spread(url, i);
            let mut c = common::logged_in(&at, &common::identity(keys, name)).await?;
            c.join_room(&room.room_id, None)
                .await
                .map_err(|e| format!("join: {e}"))?;
            conns.push(c);
        }
        room_ids.push(room.room_id);
    }
    let prepared = prepare(keys, &room_ids, &members, o, false);
    let ws = conns.into_iter().map(|c| c.into_ws()).collect();
    let before = common::CommitStats::snapshot(url).await;
    let report = drive("server", ws, prepared, o, pid).await?;
    println!(
        "fanout[server] store: {}",
        common::CommitStats::snapshot(url).await.describe(&before)
    );
    Ok(report)
}

/// Runs the same fan-out through the bare relay.
pub async fn run_relay(
    relay_url: &str,
    keys: &KeyPair,
    o: &FanoutOpts,
) -> BenchResult<FanoutReport> {
    let members: Vec<Vec<String>> = (0..o.rooms)
        .map(|r| (0..o.members).map(|i| format!("relay-{r}-{i}")).collect())
        .collect();
    let room_ids: Vec<String> = (0..o.rooms).map(|r| format!("relay-room-{r}")).collect();
    let mut ws = Vec::new();
    for r in 0..o.rooms {
        for _ in 0..o.members {
            let url = format!("{relay_url}?room={r}");
            let (s, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), None, true)
                .await
                .map_err(|e| format!("relay connect: {e}"))?;
            ws.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // let every join reach the hub
    let prepared = prepare(keys, &room_ids, &members, o, true);
    drive("baseline relay", ws, prepared, o, None).await
}

/// Sends every prepared frame (at the rate, within the window) and records
/// when each delivery (a v2 `message` or a v3 `entry`) reaches each member.
pub async fn drive(
    target: &'static str,
    conns: Vec<e2ee_chat::client::Ws>,
    prepared: Prepared,
    o: &FanoutOpts,
    pid: Option<u32>,
) -> BenchResult<FanoutReport> {
    let total = prepared.frames.len();
    let per_room = total / o.rooms;
    let expected = per_room * o.members * o.rooms;
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let owner = Arc::new(prepared.owner);
    let senders_total = prepared.per_sender.len().max(1);
    let windows: Vec<Arc<Semaphore>> = (0..conns.len())
        .map(|_| Arc::new(Semaphore::new(o.window.max(1))))
        .collect();
    let budget = Duration::from_secs(30)
        + Duration::from_secs_f64(if o.rate > 0.0 {
            total as f64 / o.rate
        } else {
            0.0
        });
    let meter = Meter::start(pid);
    let t0 = Instant::now();
    let deadline = t0 + budget;

    let mut sinks = Vec::new();
    let mut readers = Vec::new();
    for (c, ws) in conns.into_iter().enumerate() {
        let (sink, mut stream) = ws.split();
        sinks.push(sink);
        let (sent_at, owner, window) = (sent_at.clone(), owner.clone(), windows[c].clone());
        readers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_room);
            let (mut errors, mut last) = (0usize, t0);
            while latencies.len() < per_room {
                let next = tokio::time::timeout_at(deadline.into(), stream.next()).await;
                let Ok(Some(Ok(WsMessage::Binary(frame)))) = next else {
                    if matches!(next, Ok(Some(Ok(_)))) {
                        continue;
                    }
                    break;
                };
                match peek_type(&frame) {
                    b"message" | b"entry" => {
                        if let Some(idx) = message_index(&frame).filter(|i| *i < sent_at.len()) {
                            let now = t0.elapsed().as_nanos() as u64;
                            last = Instant::now();
                            let at = sent_at[idx].load(Ordering::Acquire);
                            latencies.push(now.saturating_sub(at.saturating_sub(1)) / 1000);
                            if owner[idx] == c {
                                window.add_permits(1);
                            }
                        }
                    }
                    b"error" => errors += 1,
                    _ => {}
                }
            }
            (latencies, errors, last, stream)
        }));
    }
    let mut sinks: Vec<Option<_>> = sinks.into_iter().map(Some).collect();
    let per_sender_rate = o.rate / senders_total as f64;
    let mut writers = Vec::new();
    for (k, (conn, list)) in prepared.per_sender.into_iter().enumerate() {
        let mut sink = sinks[conn].take().expect("one writer per connection");
        let frames: Vec<(usize, Vec<u8>)> = list
            .iter()
            .map(|&i| (i, prepared.frames[i].clone()))
            .collect();
        let (sent_at, window) = (sent_at.clone(), windows[conn].clone());
        writers.push(tokio::spawn(async move {
            // Stagger the senders evenly inside each period.
            let offset = k as f64 / (per_sender_rate.max(1e-9) * senders_total as f64);
            for (j, (idx, frame)) in frames.into_iter().enumerate() {
                if per_sender_rate > 0.0 {
                    let due = t0 + Duration::from_secs_f64(offset + j as f64 / per_sender_rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                if let Ok(permit) = window.acquire().await {
                    permit.forget();
                }
                sent_at[idx].store(t0.elapsed().as_nanos() as u64 + 1, Ordering::Release);
                if sink.send(WsMessage::Binary(frame.into())).await.is_err() {
                    break;
                }
            }
            sink
        }));
    }
    let mut kept_sinks = Vec::new();
    for w in writers {
        kept_sinks.push(w.await.map_err(|e| e.to_string())?);
    }
    let mut latencies = Vec::with_capacity(expected);
    let (mut errors, mut last) = (0, t0);
    for r in readers {
        let (l, e, at, _stream) = r.await.map_err(|e| e.to_string())?;
        latencies.extend(l);
        errors += e;
        last = last.max(at);
    }
    let (_, cpu, rss) = meter.stop();
    drop(kept_sinks);
    Ok(FanoutReport {
        target,
        deliveries: latencies.len(),
        expected,
        wall_secs: last.duration_since(t0).as_secs_f64(),
        latency: percentiles(latencies),
        server_cpu_secs: cpu,
        server_rss: rss,
        errors,
    })
}
