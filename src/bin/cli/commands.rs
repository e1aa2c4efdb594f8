//! The one-shot subcommands: the profile's signing key is the user's
//! identity key, and this profile's
//! device (its MLS key, its groups, what it decrypted) lives in
//! `device.db` beside the keys. The work is `client::chat::Chat`'s;
//! this file parses, prints and escapes. The `chat` screen's network side
//! is `tui_net`; `export-profile` and `import-profile` need no server (the
//! imported profile's first login makes a new device).

use e2ee_chat::client::chat::Chat;
use e2ee_chat::client::conn::{Conn, IdentityPair};
use e2ee_chat::client::device_store::DeviceStore;
use e2ee_chat::client::display::escape;
use e2ee_chat::crypto::{fingerprint_display, KeyPair};
use e2ee_chat::identity::IdentityKey;
use e2ee_chat::protocol::PlainRequest;
use e2ee_chat::protocol::{Request, RoomSummary, ServerMsg};
use serde_bytes::ByteBuf;

use crate::profile::{CliResult, Profile};
use crate::show::fmt_time;
use crate::show::{owner_request, OwnerCmd};
use crate::Command;

pub async fn run(profile: Profile, url: &str, keys: KeyPair, command: Command) -> CliResult<()> {
    let identity = IdentityPair::new(&profile.config.username, keys.sign.clone());
    if let Command::Register = command {
        let mut c = Conn::connect(url)
            .await
            .map_err(|e| format!("cannot reach {url}: {e}"))?;
        c.register(&identity)
            .await
            .map_err(|e| format!("register: {e}"))?;
        println!("registered {} at {url}", identity.username);
        return Ok(());
    }
    if let Command::Fingerprint { user } = &command {
        // From the device file, without the server.
        let name = user.clone().unwrap_or_else(|| identity.username.clone());
        let key = if name == identity.username {
            identity.der.clone()
        } else {
            let (store, _) = DeviceStore::open(&profile.dir.join("device.db"))
                .map_err(|e| format!("device store: {e}"))?;
            store
                .pins()
                .map_err(|e| format!("device store: {e}"))?
                .remove(&name)
                .ok_or_else(|| format!("{name} is not pinned yet (you have not seen them)"))?
        };
        let key = IdentityKey::parse(&key).map_err(|e| format!("identity key: {e}"))?;
        println!("{name}: {}", fingerprint_display(&key.fingerprint()));
        return Ok(());
    }
    let mut m = Chat::open(url, &identity, &profile.dir.join("device.db")).await?;
    let result = command3(&mut m, command).await;
    for notice in m.notices.drain(..) {
        eprintln!("{notice}");
    }
    result
}

/// The first 1,000 rooms listed, and how many there are.
async fn list(m: &mut Chat) -> CliResult<(Vec<RoomSummary>, u64)> {
    m.c.list_rooms(Some(1000)).await.map_err(|e| e.to_string())
}

/// A room named by id (`r-...`) or by its listed name.
async fn resolve(m: &mut Chat, room: &str) -> CliResult<String> {
    if room.starts_with("r-") {
        return Ok(room.to_owned());
    }
    let (rooms, _) = list(m).await?;
    rooms
        .into_iter()
        .find(|r| r.name.to_lowercase() == room.to_lowercase())
        .map(|r| r.room_id)
        .ok_or_else(|| format!("no room named {room:?}"))
}

async fn command3(m: &mut Chat, command: Command) -> CliResult<()> {
    match command {
        Command::Rooms => {
            let (rooms, total) = list(m).await?;
            println!(
                "{:<24} {:>7} {:>6} {:>6} id",
                "name", "members", "online", "epoch"
            );
            for r in &rooms {
                println!(
                    "{:<24} {:>7} {:>6} {:>6} {}",
                    escape(&r.name),
                    r.members,
                    r.online,
                    r.epoch,
                    escape(&r.room_id)
                );
            }
            println!("{total} rooms");
        }
        Command::Create {
            name,
            password,
            hidden,
        } => {
            let room = m.create(&name, password, hidden).await?;
            println!("created {} ({})", escape(&room.name), escape(&room.room_id));
        }
        Command::Join { room, password } => {
            let id = resolve(m, &room).await?;
            let r = m.join(&id, password).await?;
            println!(
                "joined {} ({}) with {} members; this device is in its group",
                escape(&r.name),
                escape(&r.room_id),
                r.members
            );
        }
        Command::Send { room, text } => {
            let id = resolve(m, &room).await?;
            let sent = m.send(&id, &text.join(" ")).await?;
            for leaf in &sent.announced {
                eprintln!(
                    "new device in this room: {} device {} (fingerprint {})",
                    escape(&leaf.user),
                    hex::encode(&leaf.device_id),
                    fingerprint_display(&leaf.fingerprint)
                );
            }
            println!("sent (seq {})", sent.seq);
        }
        Command::History { room, n } => {
            let id = resolve(m, &room).await?;
            m.sync(&id).await?;
            let all = m.history(&id)?;
            for p in all.iter().skip(all.len().saturating_sub(n as usize)) {
                println!(
                    "#{} {} {}: {}",
                    p.seq,
                    fmt_time(p.sent_at),
                    escape(&p.sender),
                    escape(&p.text)
                );
            }
        }
        Command::Devices { user } => {
            let user = user.unwrap_or_else(|| m.device.user.clone());
            let reply =
                m.c.request(&Request::ListDevices {
                    username: user.clone(),
                })
                .await
                .map_err(|e| e.to_string())?;
            let ServerMsg::Devices { devices, .. } = reply else {
                return Err("not a device list".into());
            };
            for d in devices {
                let this = if d.device_id.as_slice() == m.device.device_id {
                    " (this device)"
                } else {
                    ""
                };
                println!(
                    "{} added {}{this}",
                    hex::encode(&d.device_id),
                    fmt_time(d.added_at)
                );
            }
        }
        Command::RemoveDevice { device_id } => {
            let id = hex::decode(device_id.trim()).map_err(|_| "a device id is 32 hex digits")?;
            m.c.request(&Request::RemoveDevice {
                device_id: ByteBuf::from(id),
            })
            .await
            .map_err(|e| e.to_string())?;
            println!("removed; its leaves are removed by the next commit in each room");
        }
        Command::Members { room } => {
            let id = resolve(m, &room).await?;
            let members = m.members(&id).await?;
            m.sync(&id).await?;
            let devices = m.devices_in(&id)?;
            for member in members {
                let served = IdentityKey::parse(&member.identity_key)
                    .map(|k| k.fingerprint())
                    .unwrap_or_default();
                let trust = match m.pinned(&member.username) {
                    Some(k) if k.fingerprint() != served => {
                        "KEY CHANGED: compare fingerprints, then `trust`"
                    }
                    Some(_) => "pinned",
                    None => "new",
                };
                let n = devices
                    .iter()
                    .filter(|(_, u, _)| *u == member.username)
                    .count();
                println!(
                    "{:<20} {}  {n} device(s) in the group  {trust}",
                    escape(&member.username),
                    fingerprint_display(&served)
                );
            }
        }
        Command::Trust { user, fingerprint } => {
            let wanted = crate::parse_fingerprint(&fingerprint)?;
            let mut served = None;
            for r in m.mine.clone() {
                let members = m.members(&r.room_id).await?;
                if let Some(found) = members.into_iter().find(|x| x.username == user) {
                    served = Some(found.identity_key.into_vec());
                    break;
                }
            }
            let key =
                served.ok_or_else(|| format!("{} is in none of your rooms", escape(&user)))?;
            m.trust(&user, &key, wanted)?;
            println!("{} trusted", escape(&user));
        }
        Command::Leave { room } => {
            let id = resolve(m, &room).await?;
            m.c.request(&Request::Shared(PlainRequest::LeaveRoom {
                room_id: id.clone(),
            }))
            .await
            .map_err(|e| e.to_string())?;
            println!("left {}", escape(&id));
        }
        other => {
            let (room, cmd) = match other {
                Command::Kick { room, user } => (room, OwnerCmd::Kick(user)),
                Command::Ban { room, user } => (room, OwnerCmd::Ban(user)),
                Command::Unban { room, user } => (room, OwnerCmd::Unban(user)),
                Command::Rename { room, name } => (room, OwnerCmd::Rename(name)),
                Command::SetPassword { room, password } => (room, OwnerCmd::Password(password)),
                Command::Delete { room } => (room, OwnerCmd::Delete),
                _ => unreachable!("every other command is handled above"),
            };
            let id = resolve(m, &room).await?;
            let done = cmd.done(&room);
            m.c.request(&Request::Shared(owner_request(cmd, &id)))
                .await
                .map_err(|e| e.to_string())?;
            println!("{done}");
        }
    }
    Ok(())
}
