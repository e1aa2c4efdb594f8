//! The one-shot subcommands that need a logged-in connection (`rooms`,
//! `create`, `join`, `send`, `history`, the owner tools, ...).

use e2ee_chat::client::display::escape;
use e2ee_chat::client::ClientError;
use e2ee_chat::crypto::fingerprint_display;
use e2ee_chat::protocol::Request;

use crate::connection::{fmt_time, parse_fingerprint, render, Connected};
use crate::profile::{CliResult, Pin};
use crate::Command;

pub async fn command(s: &mut Connected, command: Command) -> CliResult<()> {
    let err = |e: ClientError| e.to_string();
    match command {
        Command::Rooms => {
            let (rooms, total, connected) =
                s.client.list_rooms(None, Some(1000)).await.map_err(err)?;
            println!(
                "{:<24} {:>7} {:>6} {:>8} {:<12} id",
                "name", "members", "online", "password", "owner"
            );
            for r in &rooms {
                println!(
                    "{:<24} {:>7} {:>6} {:>8} {:<12} {}",
                    escape(&r.name),
                    r.members,
                    r.online,
                    if r.has_password { "yes" } else { "no" },
                    escape(&r.owner),
                    escape(&r.room_id)
                );
            }
            println!("{total} rooms, {connected} users online");
        }
        Command::Create {
            name,
            password,
            hidden,
        } => {
            let (room, _) = s
                .client
                .create_room(&name, password.as_deref(), hidden)
                .await
                .map_err(err)?;
            println!("created {} ({})", escape(&room.name), escape(&room.room_id));
        }
        Command::Join { room, password } => {
            let id = if room.starts_with("r-") {
                room.clone()
            } else {
                s.resolve(&room).await?.room_id
            };
            let (r, members) = s
                .client
                .join_room(&id, password.as_deref())
                .await
                .map_err(err)?;
            println!(
                "joined {} ({}) with {} members",
                escape(&r.name),
                escape(&r.room_id),
                members.len()
            );
        }
        Command::Leave { room } => {
            let r = s.resolve(&room).await?;
            s.client.leave_room(&r.room_id).await.map_err(err)?;
            println!("left {}", escape(&r.name));
        }
        Command::Send { room, text } => {
            let r = s.resolve(&room).await?;
            s.client.get_members(&r.room_id).await.map_err(err)?;
            s.persist_pins()?;
            let sent = s.client.send_text(&r.room_id, &text.join(" ")).await;
            // Whatever happened, remember who was announced.
            s.persist_pins()?;
            let (seq, _) = sent.map_err(err)?;
            println!("sent to {} as #{seq}", escape(&r.name));
        }
        Command::History { room, n } => {
            let r = s.resolve(&room).await?;
            s.client.get_members(&r.room_id).await.map_err(err)?;
            s.persist_pins()?;
            let (msgs, _) = s
                .client
                .history(&r.room_id, None, None, Some(n))
                .await
                .map_err(err)?;
            for m in &msgs {
                if let Some(l) = render(&mut s.client, &r.room_id, m) {
                    println!(
                        "[{}] #{} {} {} {}",
                        fmt_time(l.time),
                        l.seq,
                        l.sender,
                        l.mark,
                        l.text
                    );
                }
            }
        }
        Command::Members { room } => {
            let r = s.resolve(&room).await?;
            let members = s.client.get_members(&r.room_id).await.map_err(err)?;
            let changed = s.persist_pins()?;
            for m in members {
                let fp =
                    fingerprint_display(&e2ee_chat::crypto::fingerprint(&m.sign_key, &m.enc_key));
                let trust = if changed.contains(&m.username) {
                    "KEY CHANGED"
                } else {
                    "pinned"
                };
                let online = if m.online { "online" } else { "offline" };
                println!("{:<16} {online:<8} {trust:<12} {fp}", escape(&m.username));
            }
        }
        Command::Trust { user, fingerprint } => {
            let wanted = parse_fingerprint(&fingerprint)?;
            let mut found = None;
            for r in s.rooms.clone() {
                if let Ok(members) = s.client.get_members(&r.room_id).await {
                    if let Some(m) = members.into_iter().find(|m| m.username == user) {
                        found = Some(m);
                        break;
                    }
                }
            }
            let m = found.ok_or_else(|| {
                format!("{user} is in none of your rooms; join one of theirs first")
            })?;
            if let Some(old) = s.trust(&m, wanted)? {
                println!("{user}: was {}", old.display());
            }
            println!(
                "{user}: now trusted {}",
                Pin::new(&m.sign_key, &m.enc_key).display()
            );
        }
        Command::Kick { room, user } => {
            let who = escape(&user);
            owner_op(s, &room, OwnerCmd::Kick(user), |r| {
                format!("kicked {who} from {r}")
            })
            .await?;
        }
        Command::Ban { room, user } => {
            let who = escape(&user);
            owner_op(s, &room, OwnerCmd::Ban(user), |r| {
                format!("banned {who} from {r}")
            })
            .await?;
        }
        Command::Unban { room, user } => {
            let who = escape(&user);
            owner_op(s, &room, OwnerCmd::Unban(user), |r| {
                format!("unbanned {who} in {r}")
            })
            .await?;
        }
        Command::Rename { room, name } => {
            let new = escape(&name);
            owner_op(s, &room, OwnerCmd::Rename(name), |r| {
                format!("renamed {r} to {new}")
            })
            .await?;
        }
        Command::SetPassword { room, password } => {
            let what = if password.is_some() { "set" } else { "removed" };
            owner_op(s, &room, OwnerCmd::Password(password), |r| {
                format!("password {what} for {r}")
            })
            .await?;
        }
        Command::Delete { room } => {
            owner_op(s, &room, OwnerCmd::Delete, |r| format!("deleted {r}")).await?
        }
        Command::Keygen { .. }
        | Command::ExportProfile { .. }
        | Command::ImportProfile { .. }
        | Command::Register
        | Command::Fingerprint { .. }
        | Command::Chat => {
            unreachable!("handled before connecting")
        }
        Command::Devices { .. } | Command::RemoveDevice { .. } => {
            return Err("devices are protocol v3's: add --protocol 3".into())
        }
    }
    Ok(())
}

/// An owner operation, as both the subcommands and the chat window name it.
pub enum OwnerCmd {
    Kick(String),
    Ban(String),
    Unban(String),
    Rename(String),
    Password(Option<String>),
    Delete,
}

/// The protocol request for an owner operation in `room_id`.
pub fn owner_request(cmd: OwnerCmd, room_id: &str) -> Request {
    let room_id = room_id.to_owned();
    match cmd {
        OwnerCmd::Kick(username) => Request::Kick { room_id, username },
        OwnerCmd::Ban(username) => Request::Ban { room_id, username },
        OwnerCmd::Unban(username) => Request::Unban { room_id, username },
        OwnerCmd::Rename(name) => Request::RenameRoom { room_id, name },
        OwnerCmd::Password(password) => Request::SetPassword { room_id, password },
        OwnerCmd::Delete => Request::DeleteRoom { room_id },
    }
}

/// Runs an owner operation on ROOM (id or name) and prints what `done`
/// says of it, given the room's (escaped) name.
async fn owner_op(
    s: &mut Connected,
    room: &str,
    cmd: OwnerCmd,
    done: impl FnOnce(&str) -> String,
) -> CliResult<()> {
    let r = s.resolve(room).await?;
    s.client
        .request_ok(&owner_request(cmd, &r.room_id))
        .await
        .map_err(|e| e.to_string())?;
    println!("{}", done(&escape(&r.name)));
    Ok(())
}
