//! `e2ee-chat chat`: the interactive full-screen client (ratatui + crossterm).
//!
//! Two halves joined by channels: a network task (`tui_net`) owns the
//! connection and the crypto, and tells the screen what to
//! show (`Ui`); this file is the screen, which only draws, reads keys and
//! asks the network task to act (`Cmd`).

use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use e2ee_chat::protocol::DirectorySummary;
use ratatui::layout::{Constraint, Direction, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, List, ListItem, Paragraph, Wrap};
use tokio::sync::mpsc;

use e2ee_chat::client::display::escape;

use crate::profile::CliResult;
use crate::{fmt_time, parse_fingerprint, OwnerCmd, Shown};

/// What the network task tells the screen.
pub enum Ui {
    Status(String),
    Rooms(Vec<DirectorySummary>),
    Members(String, Vec<(String, bool)>),
    Message(String, Shown),
    Info(Option<String>, String),
}

/// What the screen asks the network task to do.
pub enum Cmd {
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

/// Runs the screen beside `network` (given the commands the screen sends
/// and the channel to it) until the user quits.
pub async fn start<F, N>(me: String, network: N) -> CliResult<()>
where
    N: FnOnce(mpsc::UnboundedReceiver<Cmd>, std_mpsc::Sender<Ui>) -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (ui_tx, ui_rx) = std_mpsc::channel();
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let net = tokio::spawn(network(cmd_rx, ui_tx));
    let ui = tokio::task::spawn_blocking(move || screen(me, ui_rx, cmd_tx));
    let result = ui.await.map_err(|e| e.to_string())?;
    net.abort();
    result
}

// ------------------------------------------------------------------ screen

#[derive(Default)]
struct Screen {
    me: String,
    status: String,
    rooms: Vec<DirectorySummary>,
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
