//! `e2ee-chat chat`: the interactive full-screen client (ratatui + crossterm).
//!
//! Two halves joined by channels. The network task owns the connection and
//! does every RSA operation (unwrapping, signing, wrapping for every member),
//! so the terminal stays responsive however big the room; it reconnects with
//! backoff and catches up from history. The UI loop only draws and reads keys.

use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use e2ee_chat::crypto::KeyPair;
use e2ee_chat::protocol::{MessageData, RoomSummary, ServerMsg};
use ratatui::layout::{Constraint, Direction, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, List, ListItem, Paragraph, Wrap};
use tokio::sync::mpsc;

use e2ee_chat::client::display::escape;

use crate::profile::{CliResult, Profile};
use crate::{
    connect, describe, fmt_time, owner_request, parse_fingerprint, render, Connected, OwnerCmd,
    Shown,
};

/// What the network task tells the screen.
enum Ui {
    Status(String),
    Rooms(Vec<RoomSummary>),
    Members(String, Vec<(String, bool)>),
    Message(String, Shown),
    Info(Option<String>, String),
}

/// What the screen asks the network task to do.
enum Cmd {
    Send(String, String),
    Join(String, Option<String>),
    Create(String, Option<String>),
    Leave(String),
    Members(String),
    Owner(String, OwnerCmd),
    Trust(String, [u8; 32]),
}

const HELP: &[&str] = &[
    "commands: /join ROOM [PASSWORD]  /create NAME [PASSWORD]  /leave  /members",
    "          /trust USER FINGERPRINT (after comparing it with them)",
    "  owner:  /kick USER  /ban USER  /unban USER  /rename NAME  /password [PASSWORD]  /delete",
    "          /help  /quit  ·  Tab / Shift-Tab: next / previous room  ·  PageUp / PageDown: scroll",
];

pub async fn run(profile: Profile, url: String, keys: KeyPair) -> CliResult<()> {
    let (ui_tx, ui_rx) = std_mpsc::channel();
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let me = profile.config.username.clone();
    let net = tokio::spawn(network(profile, url, keys, cmd_rx, ui_tx));
    let ui = tokio::task::spawn_blocking(move || screen(me, ui_rx, cmd_tx));
    let result = ui.await.map_err(|e| e.to_string())?;
    net.abort();
    result
}

// ------------------------------------------------------------------ network

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

// ------------------------------------------------------------------ screen

#[derive(Default)]
struct Screen {
    me: String,
    status: String,
    rooms: Vec<RoomSummary>,
    current: usize,
    /// Lines scrolled up from the newest in the current room (PageUp/PageDown).
    scroll: usize,
    lines: HashMap<String, Vec<Line<'static>>>,
    seen: HashMap<String, u64>,
    unread: HashMap<String, usize>,
    members: HashMap<String, Vec<(String, bool)>>,
    notices: Vec<String>,
    input: String,
}

impl Screen {
    fn room_id(&self) -> Option<String> {
        self.rooms.get(self.current).map(|r| r.room_id.clone())
    }

    fn apply(&mut self, u: Ui) {
        match u {
            Ui::Status(s) => self.status = s,
            Ui::Rooms(rooms) => {
                let keep = self.room_id();
                self.rooms = rooms;
                self.current = keep
                    .and_then(|id| self.rooms.iter().position(|r| r.room_id == id))
                    .unwrap_or(self.rooms.len().saturating_sub(1));
            }
            Ui::Members(room, list) => {
                self.members.insert(room, list);
            }
            Ui::Message(room, m) => {
                // Catch-up after a reconnect may repeat what we already show.
                let seen = self.seen.entry(room.clone()).or_default();
                if m.seq <= *seen {
                    return;
                }
                *seen = m.seq;
                let style = match m.mark {
                    "✓" => Style::default(),
                    _ => Style::default().add_modifier(Modifier::DIM),
                };
                let line = Line::from(vec![
                    Span::raw(format!("{} ", &fmt_time(m.time)[11..16])),
                    Span::styled(
                        m.sender.clone(),
                        Style::default().add_modifier(Modifier::BOLD),
                    ),
                    Span::raw(format!(" {} ", m.mark)),
                    Span::styled(m.text, style),
                ]);
                if Some(&room) != self.room_id().as_ref() {
                    *self.unread.entry(room.clone()).or_default() += 1;
                }
                self.lines.entry(room).or_default().push(line);
            }
            Ui::Info(Some(room), text) => {
                self.lines.entry(room).or_default().push(Line::styled(
                    format!("-- {text}"),
                    Style::default().add_modifier(Modifier::ITALIC),
                ));
            }
            Ui::Info(None, text) => self.notices.push(text),
        }
    }

    fn switch(&mut self, delta: isize) {
        if self.rooms.is_empty() {
            return;
        }
        let n = self.rooms.len() as isize;
        self.current = ((self.current as isize + delta).rem_euclid(n)) as usize;
        self.scroll = 0;
        if let Some(id) = self.room_id() {
            self.unread.remove(&id);
        }
    }

    /// Scrolls the current room by half a screen (`pages` > 0: back in time).
    fn scroll_by(&mut self, pages: isize) {
        let len = self
            .room_id()
            .and_then(|id| self.lines.get(&id))
            .map_or(0, Vec::len);
        let step = 10isize * pages;
        self.scroll = (self.scroll as isize + step).clamp(0, len as isize) as usize;
    }

    fn draw(&self, f: &mut ratatui::Frame) {
        let rows = Layout::default()
            .direction(Direction::Vertical)
            .constraints([
                Constraint::Length(1),
                Constraint::Min(3),
                Constraint::Length(3),
            ])
            .split(f.area());
        let notice = self
            .notices
            .last()
            .map(|n| format!(" | {n}"))
            .unwrap_or_default();
        f.render_widget(
            Paragraph::new(format!("{} | {}{notice}", self.me, self.status)),
            rows[0],
        );
        let cols = Layout::default()
            .direction(Direction::Horizontal)
            .constraints([
                Constraint::Percentage(20),
                Constraint::Percentage(60),
                Constraint::Percentage(20),
            ])
            .split(rows[1]);
        let rooms: Vec<ListItem> = self
            .rooms
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let unread = self.unread.get(&r.room_id).copied().unwrap_or(0);
                let label = if unread > 0 {
                    format!("{} ({unread})", escape(&r.name))
                } else {
                    escape(&r.name)
                };
                let style = if i == self.current {
                    Style::default().add_modifier(Modifier::REVERSED)
                } else {
                    Style::default()
                };
                ListItem::new(label).style(style)
            })
            .collect();
        f.render_widget(
            List::new(rooms).block(Block::default().borders(Borders::ALL).title("rooms")),
            cols[0],
        );
        let id = self.room_id().unwrap_or_default();
        let lines = self.lines.get(&id).cloned().unwrap_or_default();
        let height = cols[1].height.saturating_sub(2) as usize;
        // Scrolled back: the window ends `scroll` lines above the newest.
        let end = lines
            .len()
            .saturating_sub(self.scroll)
            .max(height.min(lines.len()));
        // Walk back from `end` while the lines, wrapped, still fit.
        let width = cols[1].width.saturating_sub(2).max(1) as usize;
        let mut start = end;
        let mut used = 0;
        while start > 0 {
            let needed = lines[start - 1].width().div_ceil(width).max(1);
            if used + needed > height {
                break;
            }
            used += needed;
            start -= 1;
        }
        let title = self.rooms.get(self.current).map_or(
            "no room: /join NAME or /create NAME".to_string(),
            |r| {
                let name = escape(&r.name);
                if end < lines.len() {
                    format!(
                        "{name} (scrolled back: {} newer lines, PageDown)",
                        lines.len() - end
                    )
                } else {
                    name
                }
            },
        );
        f.render_widget(
            Paragraph::new(lines[start..end].to_vec())
                .wrap(Wrap { trim: false })
                .block(Block::default().borders(Borders::ALL).title(title)),
            cols[1],
        );
        let members: Vec<ListItem> = self
            .members
            .get(&id)
            .map(|ms| {
                ms.iter()
                    .map(|(u, online)| {
                        ListItem::new(format!("{} {}", if *online { "●" } else { "○" }, escape(u)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        f.render_widget(
            List::new(members).block(Block::default().borders(Borders::ALL).title("members")),
            cols[2],
        );
        f.render_widget(
            Paragraph::new(self.input.as_str()).block(
                Block::default()
                    .borders(Borders::ALL)
                    .title("message (/help for commands; Tab: next room)"),
            ),
            rows[2],
        );
    }

    /// Turns the input line into a command; false means quit.
    fn submit(&mut self, cmds: &mpsc::UnboundedSender<Cmd>) -> bool {
        let input = std::mem::take(&mut self.input);
        let text = input.trim();
        if text.is_empty() {
            return true;
        }
        let mut words = text.split_whitespace();
        let room = self.room_id();
        let first = words.next().unwrap_or_default();
        let rest: Vec<&str> = words.collect();
        let arg = rest.first().map(|w| w.to_string());
        let mut usage = |what: &str| {
            self.notices.push(format!("usage: {what}"));
            None
        };
        let owner = |op: OwnerCmd| room.clone().map(|r| Cmd::Owner(r, op));
        let cmd = match first {
            "/quit" => return false,
            "/help" => {
                let lines = self
                    .lines
                    .entry(room.clone().unwrap_or_default())
                    .or_default();
                lines.extend(HELP.iter().map(|l| Line::raw(l.to_string())));
                if room.is_none() {
                    self.notices.push(HELP[0].into());
                }
                None
            }
            "/join" => match arg {
                Some(r) => Some(Cmd::Join(r, rest.get(1).map(|w| w.to_string()))),
                None => usage("/join ROOM [PASSWORD]"),
            },
            "/create" => match arg {
                Some(n) => Some(Cmd::Create(n, rest.get(1).map(|w| w.to_string()))),
                None => usage("/create NAME [PASSWORD]"),
            },
            "/leave" => room.clone().map(Cmd::Leave),
            "/members" => room.clone().map(Cmd::Members),
            "/kick" | "/ban" | "/unban" => match arg {
                Some(u) => owner(match first {
                    "/kick" => OwnerCmd::Kick(u),
                    "/ban" => OwnerCmd::Ban(u),
                    _ => OwnerCmd::Unban(u),
                }),
                None => usage(&format!("{first} USER")),
            },
            "/rename" if !rest.is_empty() => owner(OwnerCmd::Rename(rest.join(" "))),
            "/rename" => usage("/rename NAME"),
            "/password" => owner(OwnerCmd::Password(arg)),
            "/delete" => owner(OwnerCmd::Delete),
            "/trust" => match (
                arg,
                rest.get(1..)
                    .map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
            ) {
                (Some(u), Some(fp)) if !fp.is_empty() => match parse_fingerprint(&fp) {
                    Ok(fp) => Some(Cmd::Trust(u, fp)),
                    Err(e) => {
                        self.notices.push(e);
                        None
                    }
                },
                _ => usage("/trust USER FINGERPRINT"),
            },
            w if w.starts_with('/') => {
                self.notices
                    .push(format!("unknown command {}; /help lists them", escape(w)));
                None
            }
            _ => match room.clone() {
                Some(r) => Some(Cmd::Send(r, text.to_owned())),
                None => {
                    self.notices.push("join or create a room first".into());
                    None
                }
            },
        };
        if cmd.is_none()
            && room.is_none()
            && matches!(
                first,
                "/leave"
                    | "/members"
                    | "/kick"
                    | "/ban"
                    | "/unban"
                    | "/rename"
                    | "/password"
                    | "/delete"
            )
        {
            self.notices.push("select a room first".into());
        }
        if let Some(cmd) = cmd {
            let _ = cmds.send(cmd);
        }
        true
    }
}

fn screen(
    me: String,
    updates: std_mpsc::Receiver<Ui>,
    cmds: mpsc::UnboundedSender<Cmd>,
) -> CliResult<()> {
    let mut terminal = ratatui::init();
    let mut s = Screen {
        me,
        status: "starting".into(),
        ..Screen::default()
    };
    let result = (|| -> std::io::Result<()> {
        loop {
            while let Ok(u) = updates.try_recv() {
                s.apply(u);
            }
            terminal.draw(|f| s.draw(f))?;
            if !event::poll(Duration::from_millis(50))? {
                continue;
            }
            let Event::Key(key) = event::read()? else {
                continue;
            };
            if key.kind != KeyEventKind::Press {
                continue;
            }
            match (key.code, key.modifiers) {
                (KeyCode::Char('c'), KeyModifiers::CONTROL) | (KeyCode::Esc, _) => return Ok(()),
                (KeyCode::Tab, _) | (KeyCode::Char('n'), KeyModifiers::CONTROL) => s.switch(1),
                (KeyCode::BackTab, _) | (KeyCode::Char('p'), KeyModifiers::CONTROL) => s.switch(-1),
                (KeyCode::Enter, _) if !s.submit(&cmds) => return Ok(()),
                (KeyCode::PageUp, _) => s.scroll_by(1),
                (KeyCode::PageDown, _) => s.scroll_by(-1),
                (KeyCode::Backspace, _) => {
                    s.input.pop();
                }
                (KeyCode::Char(ch), _) => s.input.push(ch),
                _ => {}
            }
        }
    })();
    ratatui::restore();
    result.map_err(|e| format!("terminal: {e}"))
}
