//! `history`: one account floods `history` on a big room while a bystander
//! sends (issue 20 item 8: on PostgreSQL a late joiner's history scanned the
//! whole room, and three connections of one account at 45 requests/s filled
//! the store's pool: a bystander's send took seconds or failed). Fills a
//! room with M messages (one real PrivateMessage of the owner's, sent under
//! M msg_ids: the server cannot tell), lets a user join after them, then
//! for S seconds that user's C connections ask for history at R requests/s
//! in all while the owner, on another connection, sends B messages/s;
//! reports both sides' latencies.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2ee_chat::client::conn::Conn;
use e2ee_chat::crypto::KeyPair;
use e2ee_chat::protocol::{peek_type, PlainRequest};
use e2ee_chat::protocol::{Request, ServerMsg};
use futures_util::{SinkExt, StreamExt};
use openmls_rust_crypto::OpenMlsRustCrypto;
use serde_bytes::ByteBuf;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::common::{self, BenchResult};

#[derive(Debug, Clone, clap::Args)]
pub struct HistoryOpts {
    /// Messages in the room before the flood.
    #[arg(long, default_value_t = 200_000)]
    pub messages: usize,
    /// Connections of the flooding account.
    #[arg(long, default_value_t = 3)]
    pub connections: usize,
    /// History requests per second, all connections together.
    #[arg(long, default_value_t = 45.0)]
    pub rate: f64,
    /// The bystander's sends per second.
    #[arg(long, default_value_t = 10.0)]
    pub bystander_rate: f64,
    /// Seconds of flood.
    #[arg(long, default_value_t = 20)]
    pub secs: u64,
}

/// What one paced connection saw.
#[derive(Default)]
struct Paced {
    /// Latencies (µs) of answers of the expected type.
    ok: Vec<u64>,
    /// Error answers by code.
    errors: Vec<String>,
    /// Requests never answered.
    lost: usize,
}

/// Sends `frames` (ids 0..n) at `per_sec` on `client`'s connection and
/// times each answer by its id.
async fn paced(client: Conn, frames: Vec<Vec<u8>>, per_sec: f64, ok: &'static [u8]) -> Paced {
    let (mut sink, mut stream) = client.into_ws().split();
    let total = frames.len();
    let stamps: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; total]));
    let reader = {
        let stamps = stamps.clone();
        tokio::spawn(async move {
            let mut out = Paced::default();
            let mut got = 0;
            loop {
                if got == total {
                    break;
                }
                let next = tokio::time::timeout(Duration::from_secs(30), stream.next()).await;
                let Ok(Some(Ok(WsMessage::Binary(f)))) = next else {
                    if matches!(next, Ok(Some(Ok(_)))) {
                        continue;
                    }
                    break;
                };
                let Ok(msg) = ServerMsg::decode(&f) else {
                    continue;
                };
                let Some(id) = msg.reply_id() else { continue };
                got += 1;
                let at = stamps.lock().unwrap().get(id as usize).copied().flatten();
                if peek_type(&f) == ok {
                    out.ok
                        .push(at.map_or(0, |t| t.elapsed().as_micros() as u64));
                } else if let ServerMsg::Error { code, .. } = msg {
                    out.errors.push(format!("{code:?}"));
                }
            }
            out.lost = total - got;
            out
        })
    };
    let gap = Duration::from_secs_f64(1.0 / per_sec.max(0.001));
    let mut tick = tokio::time::interval(gap);
    for (i, frame) in frames.into_iter().enumerate() {
        tick.tick().await;
        stamps.lock().unwrap()[i] = Some(Instant::now());
        if sink.send(WsMessage::Binary(frame.into())).await.is_err() {
            break;
        }
    }
    reader.await.unwrap_or_default()
}

pub async fn run(
    url: &str,
    pid: Option<u32>,
    keys: &KeyPair,
    o: &HistoryOpts,
) -> BenchResult<bool> {
    let run = hex::encode(e2ee_chat::crypto::random_bytes::<3>());
    let (w, late) = (format!("h{run}-w"), format!("h{run}-late"));
    let writer_id = common::identity(keys, &w);
    let (mut writer, device) = common::logged_in(url, &writer_id).await?;
    let provider = OpenMlsRustCrypto::default();
    let (room, mut group) = common::create_room(
        &mut writer,
        &device,
        &provider,
        &format!("history {run}"),
        None,
        false,
    )
    .await?;
    let rid = room.room_id.clone();
    let message = device
        .encrypt(&provider, &mut group, b"history bench")
        .map_err(|e| e.to_string())?;
    let frame = |id: u64| {
        Request::Send {
            room_id: rid.clone(),
            msg_id: ByteBuf::from(e2ee_chat::crypto::random_bytes::<16>().to_vec()),
            message: ByteBuf::from(message.clone()),
        }
        .encode(Some(id))
    };
    // Fill the room, pipelined.
    let started = Instant::now();
    let (mut sink, mut stream) = writer.into_ws().split();
    let (mut next, mut acked) = (0usize, 0usize);
    while acked < o.messages {
        while next < o.messages && next - acked < 512 {
            sink.send(WsMessage::Binary(frame(next as u64).into()))
                .await
                .map_err(|e| e.to_string())?;
            next += 1;
        }
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
            Ok(Some(Ok(WsMessage::Binary(f)))) => match peek_type(&f) {
                b"sent" => acked += 1,
                b"error" => return Err(format!("filling: {:?}", ServerMsg::decode(&f))),
                _ => {}
            },
            Ok(Some(Ok(_))) => {}
            other => return Err(format!("filling: {other:?}")),
        }
    }
    let fill = started.elapsed();
    drop((sink, stream));
    // The owner sends on a new connection of its device (one that did not
    // read its events during the fill would be disconnected as a slow
    // reader).
    let mut bystander = Conn::connect(url).await.map_err(|e| e.to_string())?;
    bystander
        .login(&writer_id, &device.certificate)
        .await
        .map_err(|e| format!("login: {e}"))?;
    // The late joiner: a member with no entry of the room's to read.
    let late_id = common::identity(keys, &late);
    let mut flooders = Vec::new();
    for _ in 0..o.connections.max(1) {
        flooders.push(common::logged_in(url, &late_id).await?.0);
    }
    common::join_room(&mut flooders[0], &rid, None).await?;
    let per_conn = (o.rate * o.secs as f64 / flooders.len() as f64).ceil() as usize;
    let conn_rate = o.rate / flooders.len() as f64;
    let history = |i: usize| {
        Request::Shared(PlainRequest::History {
            room_id: rid.clone(),
            after_seq: None,
            before_seq: None,
            limit: Some(50),
        })
        .encode(Some(i as u64))
    };
    let sends = (o.bystander_rate * o.secs as f64).ceil() as usize;
    let meter = common::Meter::start(pid);
    let flood: Vec<_> = flooders
        .into_iter()
        .map(|c| {
            let frames = (0..per_conn).map(history).collect();
            tokio::spawn(paced(c, frames, conn_rate, b"history"))
        })
        .collect();
    let frames = (0..sends).map(|i| frame(i as u64)).collect();
    let by = paced(bystander, frames, o.bystander_rate, b"sent").await;
    let mut reads = Paced::default();
    for f in flood {
        let p = f.await.map_err(|e| e.to_string())?;
        reads.ok.extend(p.ok);
        reads.errors.extend(p.errors);
        reads.lost += p.lost;
    }
    let (_, cpu, _) = meter.stop();
    let limited = reads.errors.iter().filter(|e| *e == "RateLimited").count();
    println!(
        "history: room of {} entries (filled in {:.1} s); {} history requests at {}/s from {} connections of a late joiner: {} answered ({}), {limited} rate_limited, {} other errors, {} unanswered; bystander sends at {}/s: {}; bystander errors {:?}, unanswered {}; server CPU {}",
        o.messages,
        fill.as_secs_f64(),
        per_conn * o.connections.max(1),
        o.rate,
        o.connections.max(1),
        reads.ok.len(),
        common::percentiles(reads.ok.clone()),
        reads.errors.len() - limited,
        reads.lost,
        o.bystander_rate,
        common::percentiles(by.ok.clone()),
        by.errors,
        by.lost,
        common::fmt_opt(cpu, "s"),
    );
    Ok(by.errors.is_empty() && by.lost == 0)
}
