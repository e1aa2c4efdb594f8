//! The network half of `chat`: one `Chat` (this
//! profile's device, its groups in `device.db`) drives section 7 while the
//! screen shows what it decrypted. Entry events are applied as they come
//! (a gap reads history first); new devices are shown as their commits
//! land; a member who leaves has their leaves removed by a commit (every
//! member's device may race to do it: the first wins); a changed identity
//! key blocks sending until `/trust`. It reconnects with backoff and
//! catches up from history; a room's earlier messages come from the
//! device file.

use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use e2ee_chat::client::chat::Chat;
use e2ee_chat::client::conn::IdentityPair;
use e2ee_chat::client::device_store::Plaintext;
use e2ee_chat::client::display::escape;
use e2ee_chat::client::room_log::Leaf;
use e2ee_chat::crypto::{fingerprint_display, KeyPair};
use e2ee_chat::protocol::{DirectorySummary, PlainMsg, PlainRequest};
use e2ee_chat::protocol::{Member as MemberInfo, Request, RoomSummary, ServerMsg};
use tokio::sync::mpsc;

use crate::profile::{CliResult, Profile};
use crate::tui::{Cmd, Ui};
use crate::{owner_request, Shown};

pub async fn run(profile: Profile, url: String, keys: KeyPair) -> CliResult<()> {
    let identity = IdentityPair::new(&profile.config.username, keys.sign.clone());
    let path = profile.dir.join("device.db");
    crate::tui::start(identity.username.clone(), move |cmds, ui| {
        network(url, identity, path, cmds, ui)
    })
    .await
}

/// The screen's room list shows names; the directory's summary carries them.
fn summary(r: &RoomSummary) -> DirectorySummary {
    DirectorySummary {
        room_id: r.room_id.clone(),
        name: r.name.clone(),
        owner: r.owner.clone(),
        members: r.members,
        online: r.online,
        has_password: r.has_password,
        hidden: r.hidden,
        created_at: r.created_at,
        last_seq: r.last_seq,
    }
}

fn shown(p: Plaintext) -> (String, Shown) {
    let failed = p.sender.ends_with("[sender check failed]");
    (
        p.room_id,
        Shown {
            seq: p.seq,
            time: p.sent_at,
            sender: escape(&p.sender),
            mark: if failed { "✗" } else { "✓" },
            text: escape(&p.text),
        },
    )
}

/// What the network side keeps across reconnects.
#[derive(Default)]
struct State {
    rooms: Vec<RoomSummary>,
    members: HashMap<String, Vec<(String, bool)>>,
}

async fn network(
    url: String,
    identity: IdentityPair,
    path: std::path::PathBuf,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    ui: std_mpsc::Sender<Ui>,
) {
    let mut backoff = 1u64;
    let mut state = State::default();
    let mut shown_history = false;
    loop {
        let _ = ui.send(Ui::Status(format!("connecting to {url}...")));
        match Chat::open(&url, &identity, &path).await {
            Ok(mut m) => {
                backoff = 1;
                m.c.timeout = Duration::from_secs(60);
                let _ = ui.send(Ui::Status(format!(
                    "connected to {url} as {}",
                    identity.username
                )));
                state.rooms = std::mem::take(&mut m.mine);
                let mut n = Net {
                    m,
                    ui: &ui,
                    state: &mut state,
                };
                if let Err(e) = n.session(&mut cmds, !shown_history).await {
                    let _ = ui.send(Ui::Info(None, format!("connection lost: {e}")));
                }
                shown_history = true;
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

/// One connection's work.
struct Net<'a> {
    m: Chat,
    ui: &'a std_mpsc::Sender<Ui>,
    state: &'a mut State,
}

impl Net<'_> {
    fn info(&self, room: Option<&str>, text: String) {
        let _ = self.ui.send(Ui::Info(room.map(str::to_owned), text));
    }

    fn show_rooms(&self) {
        let rooms = self.state.rooms.iter().map(summary).collect();
        let _ = self.ui.send(Ui::Rooms(rooms));
    }

    fn show(&self, plaintexts: Vec<Plaintext>) {
        for p in plaintexts {
            let (room, line) = shown(p);
            let _ = self.ui.send(Ui::Message(room, line));
        }
    }

    /// What the device decrypted since last asked, its notices (a
    /// resync) and the new devices in `room_id`.
    fn tell(&mut self, room_id: &str) {
        let received = std::mem::take(&mut self.m.received);
        self.show(received);
        for n in std::mem::take(&mut self.m.notices) {
            self.info(Some(room_id), escape(&n));
        }
        match self.m.take_announcements(room_id) {
            Ok(leaves) => self.announce(room_id, &leaves),
            Err(e) => self.info(Some(room_id), escape(&e)),
        }
    }

    fn announce(&self, room_id: &str, leaves: &[Leaf]) {
        for leaf in leaves {
            self.info(
                Some(room_id),
                format!(
                    "new device in this room: {} device {} (fingerprint {})",
                    escape(&leaf.user),
                    hex::encode(&leaf.device_id),
                    fingerprint_display(&leaf.fingerprint)
                ),
            );
        }
    }

    fn set_members(&mut self, room_id: &str, members: &[MemberInfo]) {
        let list: Vec<(String, bool)> = members
            .iter()
            .map(|m| (m.username.clone(), m.online))
            .collect();
        self.state.members.insert(room_id.to_owned(), list.clone());
        let _ = self.ui.send(Ui::Members(room_id.to_owned(), list));
    }

    /// Pins the room's members (a changed key is said loudly), shows them.
    async fn members(&mut self, room_id: &str) -> CliResult<Vec<MemberInfo>> {
        let members = self.m.members(room_id).await?;
        if let Err(e) = self.m.pin_members(&members) {
            self.info(Some(room_id), format!("WARNING: {}", escape(&e)));
        }
        self.set_members(room_id, &members);
        Ok(members)
    }

    /// Brings a room up to date: members, what the device file holds (the
    /// first time), what the server has since; a room this device is not
    /// in yet (a new device of a member) is entered by external commit.
    async fn refresh(&mut self, room_id: &str, from_file: bool) -> CliResult<()> {
        self.members(room_id).await?;
        if !self.m.is_in(room_id)? {
            self.m.enter(room_id).await?;
            self.info(Some(room_id), "this device entered the room's group".into());
        } else if from_file {
            let kept = self.m.history(room_id)?;
            let skip = kept.len().saturating_sub(200);
            self.show(kept.into_iter().skip(skip).collect());
        }
        self.m.sync(room_id).await?;
        self.tell(room_id);
        Ok(())
    }

    async fn session(
        &mut self,
        cmds: &mut mpsc::UnboundedReceiver<Cmd>,
        from_file: bool,
    ) -> CliResult<()> {
        self.show_rooms();
        for r in self.state.rooms.clone() {
            if let Err(e) = self.refresh(&r.room_id, from_file).await {
                self.info(Some(&r.room_id), escape(&e));
            }
        }
        loop {
            tokio::select! {
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else { return Ok(()) };
                    if let Err(e) = self.command(cmd).await {
                        self.info(None, escape(&e));
                    }
                }
                ev = self.m.c.next_event() => {
                    let ev = ev.map_err(|e| e.to_string())?;
                    if let Err(e) = self.event(ev).await {
                        self.info(None, escape(&e));
                    }
                }
            }
        }
    }

    async fn event(&mut self, ev: ServerMsg) -> CliResult<()> {
        match ev {
            ServerMsg::Entry(e) => {
                self.m.receive(&e).await?;
                self.tell(&e.room_id);
            }
            ServerMsg::MemberJoined { room_id, member } => {
                if let Err(e) = self.m.pin_members(std::slice::from_ref(&member)) {
                    self.info(Some(&room_id), format!("WARNING: {}", escape(&e)));
                }
                let fp = e2ee_chat::identity::IdentityKey::parse(&member.identity_key)
                    .map(|k| fingerprint_display(&k.fingerprint()))
                    .unwrap_or_else(|_| "unreadable".into());
                self.info(
                    Some(&room_id),
                    format!("{} joined (fingerprint {fp})", escape(&member.username)),
                );
                let mut list = self.state.members.remove(&room_id).unwrap_or_default();
                list.retain(|(u, _)| *u != member.username);
                list.push((member.username.clone(), member.online));
                self.state.members.insert(room_id.clone(), list.clone());
                let _ = self.ui.send(Ui::Members(room_id, list));
            }
            ServerMsg::Shared(msg) => self.shared(msg).await?,
            _ => {}
        }
        Ok(())
    }

    async fn shared(&mut self, msg: PlainMsg) -> CliResult<()> {
        match msg {
            PlainMsg::MemberLeft {
                room_id,
                username,
                reason,
            } => {
                self.info(
                    Some(&room_id),
                    format!("{} left ({})", escape(&username), escape(&reason)),
                );
                if let Some(list) = self.state.members.get_mut(&room_id) {
                    list.retain(|(u, _)| *u != username);
                    let _ = self.ui.send(Ui::Members(room_id.clone(), list.clone()));
                }
                // Section 7: their leaves go with the next commit; every
                // member's device may race to make it, and one wins.
                self.m.remove_user(&room_id, &username).await?;
                self.tell(&room_id);
            }
            PlainMsg::Presence {
                room_id,
                username,
                online,
            } => {
                if let Some(list) = self.state.members.get_mut(&room_id) {
                    for (_, o) in list.iter_mut().filter(|(u, _)| *u == username) {
                        *o = online;
                    }
                    let _ = self.ui.send(Ui::Members(room_id, list.clone()));
                }
            }
            PlainMsg::OwnerChanged { room_id, owner } => {
                self.info(
                    Some(&room_id),
                    format!("{} is now the owner", escape(&owner)),
                );
            }
            PlainMsg::RoomRenamed { room_id, name } => {
                if let Some(r) = self.state.rooms.iter_mut().find(|r| r.room_id == room_id) {
                    r.name = name.clone();
                }
                self.show_rooms();
                self.info(Some(&room_id), format!("room renamed to {}", escape(&name)));
            }
            PlainMsg::Removed { room_id, reason } => {
                self.state.rooms.retain(|r| r.room_id != room_id);
                self.show_rooms();
                self.info(None, format!("you were {} from a room", escape(&reason)));
            }
            PlainMsg::RoomDeleted { room_id } => {
                self.state.rooms.retain(|r| r.room_id != room_id);
                self.show_rooms();
                self.info(None, "a room you were in was deleted".into());
            }
            _ => {}
        }
        Ok(())
    }

    /// A room named by id (`r-...`) or by its listed name.
    async fn resolve(&mut self, room: &str) -> CliResult<String> {
        if room.starts_with("r-") {
            return Ok(room.to_owned());
        }
        let (rooms, _) = self
            .m
            .c
            .list_rooms(Some(1000))
            .await
            .map_err(|e| e.to_string())?;
        rooms
            .into_iter()
            .find(|r| r.name.to_lowercase() == room.to_lowercase())
            .map(|r| r.room_id)
            .ok_or_else(|| format!("no room named {:?}", escape(room)))
    }

    fn add_room(&mut self, room: RoomSummary) {
        if !self.state.rooms.iter().any(|r| r.room_id == room.room_id) {
            self.state.rooms.push(room);
        }
        self.show_rooms();
    }

    async fn command(&mut self, cmd: Cmd) -> CliResult<()> {
        match cmd {
            Cmd::Send(room_id, text) => {
                let sent = self.m.send(&room_id, &text).await?;
                self.announce(&room_id, &sent.announced);
                self.tell(&room_id);
                if sent.updated {
                    self.info(Some(&room_id), "this device updated its keys".into());
                }
                let mine = Plaintext {
                    room_id: room_id.clone(),
                    seq: sent.seq,
                    sender: self.m.device.user.clone(),
                    device_id: self.m.device.device_id.to_vec(),
                    sent_at: e2ee_chat::util::now_ms(),
                    text,
                };
                self.show(vec![mine]);
            }
            Cmd::Join(room, password) => {
                let id = self.resolve(&room).await?;
                let joined = self.m.join(&id, password).await?;
                self.add_room(joined);
                self.refresh(&id, true).await?;
            }
            Cmd::Create(name, password) => {
                let room = self.m.create(&name, password, false).await?;
                let id = room.room_id.clone();
                self.add_room(room);
                self.refresh(&id, false).await?;
            }
            Cmd::Leave(room_id) => {
                self.m
                    .c
                    .request(&Request::Shared(PlainRequest::LeaveRoom {
                        room_id: room_id.clone(),
                    }))
                    .await
                    .map_err(|e| e.to_string())?;
                self.state.rooms.retain(|r| r.room_id != room_id);
                self.show_rooms();
            }
            Cmd::Members(room_id) => {
                let members = self.members(&room_id).await?;
                let devices = self.m.devices_in(&room_id).unwrap_or_default();
                for member in members {
                    let served = e2ee_chat::identity::IdentityKey::parse(&member.identity_key)
                        .map(|k| k.fingerprint())
                        .unwrap_or_default();
                    let changed = match self.m.pinned(&member.username) {
                        Some(k) if k.fingerprint() != served => " KEY CHANGED",
                        _ => "",
                    };
                    let n = devices
                        .iter()
                        .filter(|(_, u, _)| *u == member.username)
                        .count();
                    self.info(
                        Some(&room_id),
                        format!(
                            "{} {} ({n} device{} in the group){changed}",
                            escape(&member.username),
                            fingerprint_display(&served),
                            if n == 1 { "" } else { "s" }
                        ),
                    );
                }
            }
            Cmd::Owner(room_id, op) => {
                self.m
                    .c
                    .request(&Request::Shared(owner_request(op, &room_id)))
                    .await
                    .map_err(|e| e.to_string())?;
                self.info(Some(&room_id), "done".into());
            }
            Cmd::Trust(user, wanted) => {
                let mut served = None;
                for r in self.state.rooms.clone() {
                    let members = self.m.members(&r.room_id).await?;
                    if let Some(found) = members.into_iter().find(|m| m.username == user) {
                        served = Some(found.identity_key.into_vec());
                        break;
                    }
                }
                let key =
                    served.ok_or_else(|| format!("{} is in none of your rooms", escape(&user)))?;
                self.m.trust(&user, &key, wanted)?;
                self.info(None, format!("{} trusted", escape(&user)));
            }
        }
        Ok(())
    }
}
