//! `fanout`: R rooms × M members, S senders per room, at a target rate (or
//! as fast as a per-sender window allows). Every member is a device logged
//! in with its certificate and joined to the room; the senders enter the
//! room's MLS group by external commit (the others need no leaf to be
//! delivered to). Each sender encrypts its messages (real openmls
//! PrivateMessages of a CBOR `{text, sent_at}`) before the timed phase.
//! Every member connection records when each message reaches it; latency is
//! send→deliver by the bench's clock, keyed by the index carried in msg_id.
//!
//! The same engine drives the baseline relay with the same frames (the
//! `entry` frames the server would deliver), so the two runs compare like
//! for like.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2ee_chat::client::conn::{Conn, IdentityPair};
use e2ee_chat::client::mls::Device;
use e2ee_chat::crypto::KeyPair;
use e2ee_chat::message::{EntryKind, LogEntry};
use e2ee_chat::protocol::{peek_type, PlainRequest};
use e2ee_chat::protocol::{Entry, Request, ServerMsg};
use futures_util::{SinkExt, StreamExt};
use openmls::prelude::MlsGroup;
use openmls_rust_crypto::OpenMlsRustCrypto;
use serde_bytes::ByteBuf;
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

/// Sends every prepared frame (at the rate, within the window) and records
/// when each delivery (an `entry`) reaches each member.
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
                    b"entry" => {
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

/// One sender's device and group.
struct Sender {
    device: Device,
    provider: OpenMlsRustCrypto,
    group: MlsGroup,
}

/// The rooms as set up: connections (member order), room ids, senders'
/// devices per room.
struct Setup {
    conns: Vec<Conn>,
    room_ids: Vec<String>,
    senders: Vec<Vec<Sender>>,
}

async fn setup(url: &str, keys: &KeyPair, o: &FanoutOpts) -> BenchResult<Setup> {
    let run = hex::encode(e2ee_chat::crypto::random_bytes::<3>());
    let senders_per_room = o.senders.min(o.members).max(1);
    let mut conns = Vec::new();
    let mut room_ids = Vec::new();
    let mut senders = Vec::new();
    for r in 0..o.rooms {
        let ids: Vec<IdentityPair> = (0..o.members)
            .map(|i| IdentityPair::new(&format!("g{run}-{r}-{i}"), keys.sign.clone()))
            .collect();
        let mut registrar = Conn::connect(url)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        for id in &ids {
            registrar
                .register(id)
                .await
                .map_err(|e| format!("register: {e}"))?;
        }
        // The owner creates the room with its group.
        let (mut owner, owner_dev) = common::device_login(url, &ids[0]).await?;
        let provider = OpenMlsRustCrypto::default();
        let name = format!("bench {run} {r}");
        let (room, group) =
            common::create_room(&mut owner, &owner_dev, &provider, &name, None, false).await?;
        let mut room_senders = vec![Sender {
            device: owner_dev,
            provider,
            group,
        }];
        conns.push(owner);
        for (i, id) in ids.iter().enumerate().skip(1) {
            let (mut c, device) = common::device_login(&common::spread(url, i), id).await?;
            c.request(&Request::Shared(PlainRequest::JoinRoom {
                room_id: room.room_id.clone(),
                password: None,
            }))
            .await
            .map_err(|e| format!("join: {e}"))?;
            if i < senders_per_room {
                let (_, group_info, ratchet_tree) = c
                    .group_state(&room.room_id)
                    .await
                    .map_err(|e| format!("group_state: {e}"))?;
                let provider = OpenMlsRustCrypto::default();
                let (group, join) = device
                    .join_external(&provider, &group_info, &ratchet_tree)
                    .map_err(|e| e.to_string())?;
                match c.commit(&room.room_id, &join).await {
                    Ok(ServerMsg::Committed { .. }) => {}
                    other => return Err(format!("external commit: {other:?}")),
                }
                for s in &mut room_senders {
                    s.device
                        .process(&s.provider, &mut s.group, &join.commit)
                        .map_err(|e| e.to_string())?;
                }
                room_senders.push(Sender {
                    device,
                    provider,
                    group,
                });
            }
            conns.push(c);
        }
        room_ids.push(room.room_id);
        senders.push(room_senders);
    }
    Ok(Setup {
        conns,
        room_ids,
        senders,
    })
}

/// Every message, encrypted in order by its sender: (index, room, sender
/// connection, msg_id, PrivateMessage).
type Sealed = Vec<(usize, usize, usize, [u8; 16], Vec<u8>)>;

fn encrypt_all(setup: &mut Setup, o: &FanoutOpts) -> BenchResult<Sealed> {
    let per_room = o.messages / o.rooms;
    let text = "x".repeat(o.text_bytes);
    let mut out = Vec::with_capacity(per_room * o.rooms);
    for (r, senders) in setup.senders.iter_mut().enumerate() {
        let n = senders.len();
        for j in 0..per_room {
            let idx = r * per_room + j;
            let s = &mut senders[j % n];
            let mut plaintext = Vec::new();
            ciborium::into_writer(
                &ciborium::Value::Map(vec![
                    (
                        ciborium::Value::Text("text".into()),
                        ciborium::Value::Text(text.clone()),
                    ),
                    (
                        ciborium::Value::Text("sent_at".into()),
                        ciborium::Value::Integer(e2ee_chat::util::now_ms().into()),
                    ),
                ]),
                &mut plaintext,
            )
            .map_err(|e| e.to_string())?;
            let message = s
                .device
                .encrypt(&s.provider, &mut s.group, &plaintext)
                .map_err(|e| e.to_string())?;
            let mut msg_id = [0u8; 16];
            msg_id[..8].copy_from_slice(&(idx as u64).to_be_bytes());
            msg_id[8..].copy_from_slice(&e2ee_chat::crypto::random_bytes::<8>());
            out.push((idx, r, r * o.members + j % n, msg_id, message));
        }
    }
    Ok(out)
}

fn prepared(sealed: &Sealed, frames: Vec<Vec<u8>>) -> Prepared {
    Prepared::new(
        frames,
        sealed.iter().map(|&(idx, _, conn, _, _)| (idx, conn)),
    )
}

/// Runs fan-out against the server and, with `relay_url`, the same
/// entries through the bare relay. Also prints what one message weighs.
pub async fn run(
    url: &str,
    pid: Option<u32>,
    keys: &KeyPair,
    o: &FanoutOpts,
    relay_url: Option<&str>,
) -> BenchResult<(FanoutReport, Option<FanoutReport>)> {
    let mut setup = setup(url, keys, o).await?;
    let sealed = encrypt_all(&mut setup, o)?;
    if let Some((_, _, _, _, m)) = sealed.first() {
        println!(
            "fanout: one {}-byte text is a {}-byte PrivateMessage",
            o.text_bytes,
            m.len()
        );
    }
    let frames = sealed
        .iter()
        .map(|(idx, r, _, msg_id, m)| {
            Request::Send {
                room_id: setup.room_ids[*r].clone(),
                msg_id: ByteBuf::from(msg_id.to_vec()),
                message: ByteBuf::from(m.clone()),
            }
            .encode(Some(*idx as u64))
        })
        .collect();
    let relay_frames: Vec<Vec<u8>> = sealed
        .iter()
        .map(|(idx, r, _, msg_id, m)| {
            let entry = LogEntry {
                kind: EntryKind::Message,
                sender: "sender".into(),
                device_id: vec![0; 16],
                epoch: 1,
                data: m.clone(),
                msg_id: Some(msg_id.to_vec()),
                group_info: None,
            };
            Entry::new(&setup.room_ids[*r], *idx as u64 + 1, 0, &entry)
                .event()
                .to_vec()
        })
        .collect();
    let server_plan = prepared(&sealed, frames);
    let relay_plan = prepared(&sealed, relay_frames);
    let ws = setup.conns.into_iter().map(Conn::into_ws).collect();
    let before = common::CommitStats::snapshot(url).await;
    let server = drive("server", ws, server_plan, o, pid).await?;
    println!(
        "fanout[server] store: {}",
        common::CommitStats::snapshot(url).await.describe(&before)
    );
    let relay = match relay_url {
        Some(relay_url) => {
            let mut ws = Vec::new();
            for r in 0..o.rooms {
                for _ in 0..o.members {
                    let url = format!("{relay_url}?room={r}");
                    let (s, _) =
                        tokio_tungstenite::connect_async_with_config(url.as_str(), None, true)
                            .await
                            .map_err(|e| format!("relay connect: {e}"))?;
                    ws.push(s);
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            Some(drive("baseline relay", ws, relay_plan, o, None).await?)
        }
        None => None,
    };
    Ok((server, relay))
}
