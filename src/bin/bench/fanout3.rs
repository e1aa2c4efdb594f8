//! `fanout3`: `fanout` against a `protocol.version = 3` server. Every member
//! is a device logged in with its certificate and joined to the room; the
//! senders enter the room's MLS group by external commit (the others need no
//! leaf to be delivered to). Each sender encrypts its messages (real
//! openmls PrivateMessages of a CBOR `{text, sent_at}`) before the timed
//! phase; the engine and the baseline relay are `fanout`'s, the relay
//! carrying the `entry` frames the server would deliver.

use e2ee_chat::client::mls::Device;
use e2ee_chat::client::v3::{Client3, IdentityPair};
use e2ee_chat::crypto::KeyPair;
use e2ee_chat::message::{EntryKind, LogEntry};
use e2ee_chat::protocol::v3::{Entry, Request3, ServerMsg3};
use e2ee_chat::protocol::Request;
use openmls::prelude::MlsGroup;
use openmls_rust_crypto::OpenMlsRustCrypto;
use serde_bytes::ByteBuf;

use crate::common::{self, BenchResult};
use crate::fanout::{drive, FanoutOpts, FanoutReport, Prepared};

/// One sender's device and group.
struct Sender {
    device: Device,
    provider: OpenMlsRustCrypto,
    group: MlsGroup,
}

/// The rooms as set up: connections (member order), room ids, senders'
/// devices per room.
struct Setup {
    conns: Vec<Client3>,
    room_ids: Vec<String>,
    senders: Vec<Vec<Sender>>,
}

fn err(what: &str) -> impl Fn(e2ee_chat::client::ClientError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

pub async fn device_login(url: &str, id: &IdentityPair) -> BenchResult<(Client3, Device)> {
    let device = Device::new(&id.username, |m| id.sign(m));
    let mut c = Client3::connect(url).await.map_err(err("connect"))?;
    c.timeout = std::time::Duration::from_secs(60);
    c.login(id, &device.certificate)
        .await
        .map_err(err("login"))?;
    Ok((c, device))
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
        let mut registrar = Client3::connect(url).await.map_err(err("connect"))?;
        for id in &ids {
            registrar.register(id).await.map_err(err("register"))?;
        }
        // The owner creates the room with its group.
        let (mut owner, owner_dev) = device_login(url, &ids[0]).await?;
        let provider = OpenMlsRustCrypto::default();
        let (group, objects) = owner_dev
            .create_group(&provider, rand::random())
            .map_err(|e| e.to_string())?;
        let joined = owner
            .request(&Request3::CreateRoom {
                name: format!("bench3 {run} {r}"),
                password: None,
                hidden: None,
                group_info: ByteBuf::from(objects.group_info),
                ratchet_tree: ByteBuf::from(objects.ratchet_tree),
            })
            .await
            .map_err(err("create room"))?;
        let ServerMsg3::Joined { room, .. } = joined else {
            return Err(format!("not joined: {joined:?}"));
        };
        let mut room_senders = vec![Sender {
            device: owner_dev,
            provider,
            group,
        }];
        conns.push(owner);
        for (i, id) in ids.iter().enumerate().skip(1) {
            let (mut c, device) = device_login(&common::spread(url, i), id).await?;
            c.request(&Request3::Shared(Request::JoinRoom {
                room_id: room.room_id.clone(),
                password: None,
            }))
            .await
            .map_err(err("join"))?;
            if i < senders_per_room {
                let (_, group_info, ratchet_tree) = c
                    .group_state(&room.room_id)
                    .await
                    .map_err(err("group_state"))?;
                let provider = OpenMlsRustCrypto::default();
                let (group, join) = device
                    .join_external(&provider, &group_info, &ratchet_tree)
                    .map_err(|e| e.to_string())?;
                match c.commit(&room.room_id, &join).await {
                    Ok(ServerMsg3::Committed { .. }) => {}
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

/// Runs v3 fan-out against the server and, with `relay_url`, the same
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
            "fanout3: one {}-byte text is a {}-byte PrivateMessage",
            o.text_bytes,
            m.len()
        );
    }
    let frames = sealed
        .iter()
        .map(|(idx, r, _, msg_id, m)| {
            Request3::Send {
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
    let ws = setup.conns.into_iter().map(Client3::into_ws).collect();
    let before = common::CommitStats::snapshot(url).await;
    let server = drive("server v3", ws, server_plan, o, pid).await?;
    println!(
        "fanout3[server] store: {}",
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
