//! The network half of `chat` on protocol v2: it owns the connection and
//! does every RSA operation (unwrapping, signing, wrapping for every
//! member), so the terminal stays responsive however big the room; it
//! reconnects with backoff and catches up from history.

use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use e2ee_chat::client::display::escape;
use e2ee_chat::crypto::KeyPair;
use e2ee_chat::protocol::{MessageData, ServerMsg};
use tokio::sync::mpsc;

use crate::profile::{CliResult, Profile};
use crate::tui::{Cmd, Ui};
use crate::{connect, describe, owner_request, render, Connected};

pub async fn run(profile: Profile, url: String, keys: KeyPair) -> CliResult<()> {
    let me = profile.config.username.clone();
    crate::tui::start(me, move |cmds, ui| network(profile, url, keys, cmds, ui)).await
}

/// Sends a message line to the screen unless it is a replay.
/// Shows `m` in `room_id`'s timeline (a message of another room fails).
fn show(c: &mut Connected, room_id: &str, m: &MessageData, ui: &std_mpsc::Sender<Ui>) {
    if let Some(line) = render(&mut c.client, room_id, m) {
        let _ = ui.send(Ui::Message(room_id.to_owned(), line));
    }
}

async fn network(
    profile: Profile,
    url: String,
    keys: KeyPair,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    ui: std_mpsc::Sender<Ui>,
) {
    let dir = profile.dir.clone();
    let mut profile = Some(profile);
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    let mut backoff = 1u64;
    loop {
        let p = match profile.take() {
            Some(p) => p,
            None => match Profile::open(&dir) {
                Ok(p) => p,
                Err(e) => {
                    let _ = ui.send(Ui::Status(e));
                    return;
                }
            },
        };
        let _ = ui.send(Ui::Status(format!("connecting to {url}...")));
        match connect(p, &url, &keys).await {
            Ok(mut c) => {
                backoff = 1;
                c.client.timeout = Duration::from_secs(60);
                let notices = ui.clone();
                c.client.on_notice(Box::new(move |n| {
                    let room = match n {
                        e2ee_chat::client::Notice::NewRecipient { room_id, .. } => room_id.clone(),
                    };
                    let _ = notices.send(Ui::Info(Some(room), describe(n)));
                }));
                let _ = ui.send(Ui::Status(format!(
                    "connected to {url} as {}",
                    c.profile.config.username
                )));
                if let Err(e) = session(&mut c, &mut cmds, &ui, &mut last_seq).await {
                    let _ = ui.send(Ui::Info(None, format!("connection lost: {e}")));
                }
                if cmds.is_closed() {
                    return;
                }
            }
            Err(e) => {
                let _ = ui.send(Ui::Status(e));
            }
        }
        let _ = ui.send(Ui::Status(format!("disconnected; retrying in {backoff} s")));
        tokio::time::sleep(Duration::from_secs(backoff)).await;
        backoff = (backoff * 2).min(30);
    }
}

fn warn_changes(c: &mut Connected, ui: &std_mpsc::Sender<Ui>) {
    if let Ok(changed) = c.persist_pins() {
        for user in changed {
            let _ = ui.send(Ui::Info(
                None,
                format!("WARNING: {}'s keys CHANGED. Their messages are untrusted and sends to rooms with them are refused until you compare fingerprints and /trust them.", escape(&user)),
            ));
        }
    }
}

async fn refresh_room(
    c: &mut Connected,
    room_id: &str,
    ui: &std_mpsc::Sender<Ui>,
    last_seq: &mut HashMap<String, u64>,
) -> CliResult<()> {
    let members = c
        .client
        .get_members(room_id)
        .await
        .map_err(|e| e.to_string())?;
    let _ = ui.send(Ui::Members(
        room_id.to_owned(),
        members
            .iter()
            .map(|m| (m.username.clone(), m.online))
            .collect(),
    ));
    warn_changes(c, ui);
    // Catch up: everything after what we have, or the latest page.
    let after = last_seq.get(room_id).copied();
    let mut cursor = after;
    loop {
        let (msgs, more) = c
            .client
            .history(
                room_id,
                cursor,
                None,
                Some(if cursor.is_some() { 200 } else { 50 }),
            )
            .await
            .map_err(|e| e.to_string())?;
        for m in &msgs {
            show(c, room_id, m, ui);
            last_seq.insert(room_id.to_owned(), m.seq);
        }
        cursor = msgs.last().map(|m| m.seq).or(cursor);
        if !(more && after.is_some()) {
            return Ok(());
        }
    }
}

async fn session(
    c: &mut Connected,
    cmds: &mut mpsc::UnboundedReceiver<Cmd>,
    ui: &std_mpsc::Sender<Ui>,
    last_seq: &mut HashMap<String, u64>,
) -> CliResult<()> {
    let _ = ui.send(Ui::Rooms(c.rooms.clone()));
    for r in c.rooms.clone() {
        refresh_room(c, &r.room_id, ui, last_seq).await?;
    }
    let mut members: HashMap<String, Vec<(String, bool)>> = HashMap::new();
    loop {
        tokio::select! {
            cmd = cmds.recv() => {
                let Some(cmd) = cmd else { return Ok(()) };
                if let Err(e) = command(c, cmd, ui, last_seq).await {
                    let _ = ui.send(Ui::Info(None, e));
                }
            }
            ev = c.client.next_event() => {
                let ev = ev.map_err(|e| e.to_string())?;
                event(c, ev, ui, last_seq, &mut members);
            }
        }
    }
}

fn event(
    c: &mut Connected,
    ev: ServerMsg,
    ui: &std_mpsc::Sender<Ui>,
    last_seq: &mut HashMap<String, u64>,
    members: &mut HashMap<String, Vec<(String, bool)>>,
) {
    let mut member_list = |room: &str, c: &Connected| {
        let list: Vec<(String, bool)> = c
            .client
            .members_of(room)
            .map(|ms| ms.iter().map(|m| (m.username.clone(), m.online)).collect())
            .unwrap_or_default();
        members.insert(room.to_owned(), list.clone());
        let _ = ui.send(Ui::Members(room.to_owned(), list));
    };
    match ev {
        ServerMsg::Message(m) => {
            last_seq.insert(m.room_id.clone(), m.seq);
            show(c, &m.room_id, &m, ui);
        }
        ServerMsg::MemberJoined { room_id, member } => {
            warn_changes(c, ui);
            let fp = e2ee_chat::crypto::fingerprint(&member.sign_key, &member.enc_key);
            let _ = ui.send(Ui::Info(
                Some(room_id.clone()),
                format!(
                    "{} joined (fingerprint {})",
                    escape(&member.username),
                    e2ee_chat::crypto::fingerprint_display(&fp)
                ),
            ));
            member_list(&room_id, c);
        }
        ServerMsg::MemberLeft {
            room_id,
            username,
            reason,
        } => {
            let _ = ui.send(Ui::Info(
                Some(room_id.clone()),
                format!("{} left ({})", escape(&username), escape(&reason)),
            ));
            member_list(&room_id, c);
        }
        ServerMsg::Presence {
            room_id,
            username,
            online,
        } => {
            if let Some(list) = members.get_mut(&room_id) {
                for (_, o) in list.iter_mut().filter(|(u, _)| *u == username) {
                    *o = online;
                }
                let _ = ui.send(Ui::Members(room_id, list.clone()));
            }
        }
        ServerMsg::OwnerChanged { room_id, owner } => {
            let _ = ui.send(Ui::Info(
                Some(room_id),
                format!("{} is now the owner", escape(&owner)),
            ));
        }
        ServerMsg::RoomRenamed { room_id, name } => {
            if let Some(r) = c.rooms.iter_mut().find(|r| r.room_id == room_id) {
                r.name = name.clone();
            }
            let _ = ui.send(Ui::Rooms(c.rooms.clone()));
            let _ = ui.send(Ui::Info(
                Some(room_id),
                format!("room renamed to {}", escape(&name)),
            ));
        }
        ServerMsg::Removed { room_id, reason } => {
            c.rooms.retain(|r| r.room_id != room_id);
            let _ = ui.send(Ui::Rooms(c.rooms.clone()));
            let _ = ui.send(Ui::Info(
                None,
                format!("you were {} from a room", escape(&reason)),
            ));
        }
        ServerMsg::RoomDeleted { room_id } => {
            c.rooms.retain(|r| r.room_id != room_id);
            let _ = ui.send(Ui::Rooms(c.rooms.clone()));
            let _ = ui.send(Ui::Info(None, "a room you were in was deleted".into()));
        }
        _ => {}
    }
}

async fn command(
    c: &mut Connected,
    cmd: Cmd,
    ui: &std_mpsc::Sender<Ui>,
    last_seq: &mut HashMap<String, u64>,
) -> CliResult<()> {
    let err = |e: e2ee_chat::client::ClientError| e.to_string();
    match cmd {
        Cmd::Send(room_id, text) => {
            if c.client.members_of(&room_id).is_none() {
                c.client.get_members(&room_id).await.map_err(err)?;
            }
            warn_changes(c, ui);
            // The echo of our own message arrives as an event like anyone's.
            c.client.send_text(&room_id, &text).await.map_err(err)?;
        }
        Cmd::Join(room, password) => {
            let id = if room.starts_with("r-") {
                room
            } else {
                c.resolve(&room).await?.room_id
            };
            let (r, _) = c
                .client
                .join_room(&id, password.as_deref())
                .await
                .map_err(err)?;
            if !c.rooms.iter().any(|x| x.room_id == r.room_id) {
                c.rooms.push(r.clone());
            }
            let _ = ui.send(Ui::Rooms(c.rooms.clone()));
            refresh_room(c, &r.room_id, ui, last_seq).await?;
        }
        Cmd::Create(name, password) => {
            let (r, _) = c
                .client
                .create_room(&name, password.as_deref(), false)
                .await
                .map_err(err)?;
            c.rooms.push(r.clone());
            let _ = ui.send(Ui::Rooms(c.rooms.clone()));
            refresh_room(c, &r.room_id, ui, last_seq).await?;
        }
        Cmd::Leave(room_id) => {
            c.client.leave_room(&room_id).await.map_err(err)?;
            c.rooms.retain(|r| r.room_id != room_id);
            let _ = ui.send(Ui::Rooms(c.rooms.clone()));
        }
        Cmd::Members(room_id) => {
            let members = c.client.get_members(&room_id).await.map_err(err)?;
            warn_changes(c, ui);
            for m in members {
                let fp = e2ee_chat::crypto::fingerprint_display(&e2ee_chat::crypto::fingerprint(
                    &m.sign_key,
                    &m.enc_key,
                ));
                let changed = if c.client.key_changes.contains(&m.username) {
                    " KEY CHANGED"
                } else {
                    ""
                };
                let _ = ui.send(Ui::Info(
                    Some(room_id.clone()),
                    format!("{} {fp}{changed}", escape(&m.username)),
                ));
            }
        }
        Cmd::Owner(room_id, op) => {
            c.client
                .request_ok(&owner_request(op, &room_id))
                .await
                .map_err(err)?;
            let _ = ui.send(Ui::Info(Some(room_id), "done".into()));
        }
        Cmd::Trust(user, wanted) => {
            let found = c
                .client
                .members_of_any(&user)
                .ok_or_else(|| format!("{} is in none of your rooms", escape(&user)))?;
            c.trust(&found, wanted)?;
            let _ = ui.send(Ui::Info(None, format!("{} trusted", escape(&user))));
        }
    }
    Ok(())
}
