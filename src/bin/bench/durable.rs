//! `durable`: one room, several senders pipelining sends; counts `sent`
//! acknowledgements per second, i.e. messages durably committed. Run against
//! a server with group commit and one that commits every message alone
//! (`store.group_commit = false`) to get the ratio in one run.

use std::time::{Duration, Instant};

use e2ee_chat::client::seal_parts;
use e2ee_chat::crypto::KeyPair;
use e2ee_chat::protocol::Request;
use futures_util::{SinkExt, StreamExt};
use serde_bytes::ByteBuf;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::common::{self, BenchResult, Meter};

#[derive(Debug, Clone, clap::Args)]
pub struct DurableOpts {
    /// Senders, all members of the one room.
    #[arg(long, default_value_t = 8)]
    pub senders: usize,
    /// Messages in all.
    #[arg(long, default_value_t = 20000)]
    pub messages: usize,
    /// Sends each sender keeps in flight.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Sign every message for real (slow to prepare; needed when the server
    /// verifies signatures).
    #[arg(long)]
    pub sign: bool,
}

pub struct DurableReport {
    pub acked: usize,
    pub errors: usize,
    pub wall: f64,
    pub mean_batch: Option<f64>,
    pub mean_commit_ms: Option<f64>,
}

impl DurableReport {
    pub fn per_sec(&self) -> f64 {
        self.acked as f64 / self.wall.max(1e-9)
    }
}

pub async fn run(
    url: &str,
    label: &str,
    pid: Option<u32>,
    keys: &KeyPair,
    o: &DurableOpts,
) -> BenchResult<DurableReport> {
    let run = hex::encode(e2ee_chat::crypto::random_bytes::<3>());
    let names: Vec<String> = (0..o.senders.max(1))
        .map(|i| format!("d{run}-{i}"))
        .collect();
    common::register_all(url, keys, &names).await?;
    let mut clients = Vec::new();
    let mut owner = common::logged_in(url, &common::identity(keys, &names[0])).await?;
    let (room, _) = owner
        .create_room(&format!("durable {run}"), None, false)
        .await
        .map_err(|e| format!("create: {e}"))?;
    clients.push(owner);
    for name in &names[1..] {
        let mut c = common::logged_in(url, &common::identity(keys, name)).await?;
        c.join_room(&room.room_id, None)
            .await
            .map_err(|e| format!("join: {e}"))?;
        clients.push(c);
    }
    // Prepare: real AES-GCM and one real OAEP wrap shared by all (one key pair);
    // a real signature only with --sign.
    let per_sender = o.messages / names.len();
    let wrapped = ByteBuf::from(
        e2ee_chat::crypto::wrap_key(&keys.enc_der, &[7u8; 32]).map_err(|e| e.to_string())?,
    );
    let mut frames: Vec<Vec<Vec<u8>>> = Vec::new();
    for _ in &names {
        let mut list = Vec::with_capacity(per_sender);
        for j in 0..per_sender {
            let msg_id = e2ee_chat::crypto::random_bytes::<16>();
            let (mut body, _) = if o.sign {
                seal_parts(keys, &room.room_id, "durable", msg_id)
            } else {
                unsigned(&room.room_id, msg_id)
            };
            body.keys = names.iter().map(|n| (n.clone(), wrapped.clone())).collect();
            list.push(Request::Send(body).encode(Some(j as u64)));
        }
        frames.push(list);
    }
    let commits_before = common::CommitStats::snapshot(url).await;
    let meter = Meter::start(pid);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (c, list) in clients.into_iter().zip(frames) {
        let window = o.window.max(1);
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut stream) = c.into_ws().split();
            let total = list.len();
            let (mut next, mut in_flight, mut acked, mut errors) = (0, 0, 0, 0);
            let deadline = Instant::now() + Duration::from_secs(120);
            while acked + errors < total {
                while in_flight < window && next < total {
                    if sink
                        .send(WsMessage::Binary(list[next].clone().into()))
                        .await
                        .is_err()
                    {
                        return (acked, errors + total - next);
                    }
                    next += 1;
                    in_flight += 1;
                }
                match tokio::time::timeout_at(deadline.into(), stream.next()).await {
                    Ok(Some(Ok(WsMessage::Binary(f)))) => {
                        let kind = e2ee_chat::protocol::peek_type(&f);
                        if kind == b"sent" {
                            acked += 1;
                            in_flight -= 1;
                        } else if kind == b"error" {
                            errors += 1;
                            in_flight -= 1;
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => return (acked, errors + total - acked - errors),
                }
            }
            (acked, errors)
        }));
    }
    let (mut acked, mut errors) = (0, 0);
    for t in tasks {
        let (a, e) = t.await.map_err(|e| e.to_string())?;
        acked += a;
        errors += e;
    }
    let wall = t0.elapsed().as_secs_f64();
    let (_, cpu, _) = meter.stop();
    let (mean_batch, mean_commit_ms) = common::CommitStats::snapshot(url)
        .await
        .since(&commits_before);
    let report = DurableReport {
        acked,
        errors,
        wall,
        mean_batch,
        mean_commit_ms,
    };
    println!(
        "durable[{label}]: {acked} acked in {wall:.2} s = {:.0} sends/s; mean commit batch {}; mean commit {}; server CPU {}; errors {errors}",
        report.per_sec(),
        report.mean_batch.map_or("n/a".into(), |b| format!("{b:.1} writes")),
        report.mean_commit_ms.map_or("n/a".into(), |m| format!("{m:.2} ms")),
        common::fmt_opt(cpu, "s"),
    );
    Ok(report)
}

/// A body with real AES-GCM ciphertext and a placeholder signature, for
/// servers run with `security.verify_signatures = false`.
pub fn unsigned(room_id: &str, msg_id: [u8; 16]) -> (e2ee_chat::protocol::SendBody, [u8; 32]) {
    let key = [7u8; 32];
    let nonce = e2ee_chat::crypto::random_bytes::<12>();
    let ct = e2ee_chat::crypto::seal(
        &key,
        &nonce,
        &e2ee_chat::crypto::message_aad(room_id, &msg_id),
        &e2ee_chat::client::Plaintext {
            text: "durable".into(),
            sent_at: 0,
        }
        .encode(),
    );
    (
        e2ee_chat::protocol::SendBody {
            room_id: room_id.to_owned(),
            msg_id: ByteBuf::from(msg_id.to_vec()),
            nonce: ByteBuf::from(nonce.to_vec()),
            key_commitment: ByteBuf::from(e2ee_chat::crypto::key_commitment(&key).to_vec()),
            ciphertext: ByteBuf::from(ct),
            keys: Default::default(),
            signature: ByteBuf::from(vec![0u8; 256]),
        },
        key,
    )
}
