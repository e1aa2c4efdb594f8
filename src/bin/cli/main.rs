//! `e2ee-chat`: the terminal client. Key files and trust on first use live
//! in a profile directory; every message is encrypted and signed here and
//! verified and decrypted here. `chat` is the interactive full-screen mode.

mod profile;
mod tui;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use e2ee_chat::client::{Client, ClientError, Identity};
use e2ee_chat::crypto::{fingerprint_display, KeyPair};
use e2ee_chat::protocol::{MessageData, RoomSummary};

use profile::{CliResult, Pin, Pins, Profile, ProfileConfig};

pub const DEFAULT_SERVER: &str = "ws://127.0.0.1:8080/ws";

#[derive(Parser)]
#[command(
    name = "e2ee-chat",
    version,
    about = "End-to-end encrypted group chat client"
)]
pub struct Cli {
    /// Profile directory (keys, pins, settings). Default: the platform config dir.
    #[arg(long, global = true, env = "E2EE_CHAT_PROFILE")]
    profile: Option<PathBuf>,
    /// Server websocket URL (ws:// or wss://). Default: the profile's, else ws://127.0.0.1:8080/ws.
    #[arg(long, global = true, env = "E2EE_CHAT_SERVER")]
    server: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make a new identity: two RSA key pairs written to the profile (mode 0600).
    Keygen {
        /// Your username (3-32 of a-z 0-9 _ -).
        #[arg(long)]
        user: String,
        /// Protect the keys with a passphrase (asked, or from E2EE_CHAT_PASSPHRASE).
        #[arg(long)]
        encrypt: bool,
        /// Replace existing keys.
        #[arg(long)]
        force: bool,
        #[arg(long, default_value_t = 2048)]
        bits: usize,
    },
    /// Register the profile's public keys with the server.
    Register,
    /// List rooms.
    Rooms,
    /// Create a room (you become its owner).
    Create {
        name: String,
        #[arg(long)]
        password: Option<String>,
        #[arg(long)]
        hidden: bool,
    },
    /// Join a room by id or name.
    Join {
        room: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Leave a room.
    Leave { room: String },
    /// Send one message.
    Send {
        room: String,
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
    },
    /// Show the latest messages of a room, decrypted.
    History {
        room: String,
        #[arg(short = 'n', default_value_t = 20)]
        n: u64,
    },
    /// Members of a room, with fingerprints and trust.
    Members { room: String },
    /// Your fingerprint, or the pinned fingerprint of USER.
    Fingerprint { user: Option<String> },
    /// Accept USER's current keys after checking the fingerprint with them.
    Trust { user: String },
    /// Interactive full-screen chat.
    Chat,
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("e2ee-chat: {e}");
        std::process::exit(1);
    }
}

fn profile_dir(cli: &Cli) -> CliResult<PathBuf> {
    match &cli.profile {
        Some(p) => Ok(p.clone()),
        None => profile::default_dir(),
    }
}

/// A logged-in connection with the profile's pins loaded.
pub struct Connected {
    pub client: Client,
    pub profile: Profile,
    pub pins: Pins,
    pub rooms: Vec<RoomSummary>,
}

pub fn server_url(cli_server: Option<&str>, profile: &Profile) -> String {
    cli_server
        .map(str::to_owned)
        .or_else(|| profile.config.server.clone())
        .unwrap_or_else(|| DEFAULT_SERVER.to_owned())
}

pub async fn connect(profile: Profile, url: &str, keys: &KeyPair) -> CliResult<Connected> {
    let pins = profile.pins()?;
    let mut client = Client::connect(url)
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    for (user, pin) in &pins.users {
        let (sign, enc) = pin.der()?;
        client
            .pin_keys(user, &sign, &enc)
            .map_err(|e| e.to_string())?;
    }
    let identity = Identity {
        username: profile.config.username.clone(),
        keys: keys.clone(),
    };
    let rooms = client.login(&identity).await.map_err(|e| match e.code() {
        Some(e2ee_chat::protocol::ErrorCode::UnknownUser) => {
            format!(
                "{} is not registered on {url}: run `e2ee-chat register`",
                identity.username
            )
        }
        _ => format!("login failed: {e}"),
    })?;
    Ok(Connected {
        client,
        profile,
        pins,
        rooms,
    })
}

impl Connected {
    /// Saves users seen for the first time and warns loudly about changed keys.
    pub fn persist_pins(&mut self) -> CliResult<Vec<String>> {
        let mut changed = false;
        let new: Vec<(String, Pin)> = self
            .client
            .pins()
            .filter(|(u, _)| !self.pins.users.contains_key(*u))
            .filter_map(|(u, _)| {
                let k = self.client.pinned(u)?;
                Some((u.to_owned(), Pin::new(&k.sign_der, &k.enc_der)))
            })
            .collect();
        for (u, pin) in new {
            self.pins.users.insert(u, pin);
            changed = true;
        }
        if changed {
            self.profile.save_pins(&self.pins)?;
        }
        Ok(self.client.key_changes.clone())
    }

    pub fn warn_key_changes(&mut self) -> CliResult<()> {
        for user in self.persist_pins()? {
            eprintln!(
                "WARNING: the keys of {user} have CHANGED since you first saw them. Their messages are \
                 shown as untrusted and sending to rooms with them is refused. Compare fingerprints \
                 with {user} in person, then run `e2ee-chat trust {user}`."
            );
        }
        Ok(())
    }

    /// A room by id, or by name (any case) among listed and joined rooms.
    pub async fn resolve(&mut self, room: &str) -> CliResult<RoomSummary> {
        if let Some(r) = self
            .rooms
            .iter()
            .find(|r| r.room_id == room || r.name.eq_ignore_ascii_case(room))
        {
            return Ok(r.clone());
        }
        let (listed, _, _) = self
            .client
            .list_rooms(None, Some(1000))
            .await
            .map_err(|e| e.to_string())?;
        listed
            .into_iter()
            .find(|r| r.room_id == room || r.name.to_lowercase() == room.to_lowercase())
            .ok_or_else(|| format!("no room {room:?}"))
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) from milliseconds since the epoch.
pub fn fmt_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// How a message is shown: its text only when it verified and decrypted
/// with the sender's pinned keys. Returns (mark, text).
pub fn render(client: &Client, m: &MessageData) -> (&'static str, String) {
    if client.key_changes.contains(&m.sender) {
        return (
            "!",
            "[untrusted: the sender's keys changed; not shown]".into(),
        );
    }
    match client.decrypt(m) {
        Ok(d) => ("✓", d.text),
        Err(e) => ("✗", format!("[failed: {e}]")),
    }
}

async fn run(cli: Cli) -> CliResult<()> {
    let dir = profile_dir(&cli)?;
    if let Command::Keygen {
        user,
        encrypt,
        force,
        bits,
    } = &cli.command
    {
        e2ee_chat::validate::username(user)
            .map_err(|_| format!("{user:?} is not a valid username (3-32 of a-z 0-9 _ -)"))?;
        let pw = profile::passphrase(*encrypt, true)?;
        eprintln!("generating two {bits}-bit RSA key pairs...");
        let keys = tokio::task::spawn_blocking({
            let bits = *bits;
            move || KeyPair::generate(bits)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let config = ProfileConfig {
            username: user.clone(),
            server: cli.server.clone(),
        };
        let p = Profile::create(&dir, config, &keys, pw.as_deref(), *force)?;
        println!("keys for {user} written to {}", p.dir.display());
        println!("fingerprint: {}", fingerprint_display(&keys.fingerprint()));
        return Ok(());
    }
    let profile = Profile::open(&dir)?;
    let url = server_url(cli.server.as_deref(), &profile);
    if let Command::Fingerprint { user } = &cli.command {
        let pins = profile.pins()?;
        let name = user
            .clone()
            .unwrap_or_else(|| profile.config.username.clone());
        let pin = pins
            .users
            .get(&name)
            .ok_or_else(|| format!("{name} is not pinned yet (you have not seen them)"))?;
        println!("{name}: {}", pin.display());
        return Ok(());
    }
    let keys = profile.keys()?;
    if let Command::Register = &cli.command {
        let mut c = Client::connect(&url)
            .await
            .map_err(|e| format!("cannot reach {url}: {e}"))?;
        let id = Identity {
            username: profile.config.username.clone(),
            keys,
        };
        c.register(&id)
            .await
            .map_err(|e| format!("register: {e}"))?;
        println!("registered {} at {url}", id.username);
        return Ok(());
    }
    if let Command::Chat = &cli.command {
        return tui::run(profile, url, keys).await;
    }
    let mut s = connect(profile, &url, &keys).await?;
    let result = command(&mut s, cli.command).await;
    s.warn_key_changes()?;
    result
}

async fn command(s: &mut Connected, command: Command) -> CliResult<()> {
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
                    r.name,
                    r.members,
                    r.online,
                    if r.has_password { "yes" } else { "no" },
                    r.owner,
                    r.room_id
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
            println!("created {} ({})", room.name, room.room_id);
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
                r.name,
                r.room_id,
                members.len()
            );
        }
        Command::Leave { room } => {
            let r = s.resolve(&room).await?;
            s.client.leave_room(&r.room_id).await.map_err(err)?;
            println!("left {}", r.name);
        }
        Command::Send { room, text } => {
            let r = s.resolve(&room).await?;
            s.client.get_members(&r.room_id).await.map_err(err)?;
            s.persist_pins()?;
            let (seq, _) = s
                .client
                .send_text(&r.room_id, &text.join(" "))
                .await
                .map_err(err)?;
            println!("sent to {} as #{seq}", r.name);
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
                let (mark, text) = render(&s.client, m);
                println!("[{}] #{} {} {mark} {text}", fmt_time(m.ts), m.seq, m.sender);
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
                println!("{:<16} {online:<8} {trust:<12} {fp}", m.username);
            }
        }
        Command::Trust { user } => {
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
            let pin = Pin::new(&m.sign_key, &m.enc_key);
            let old = s.pins.users.insert(user.clone(), pin.clone());
            s.profile.save_pins(&s.pins)?;
            s.client
                .pin_keys(&user, &m.sign_key, &m.enc_key)
                .map_err(err)?;
            if let Some(old) = old.filter(|o| *o != pin) {
                println!("{user}: was {}", old.display());
            }
            println!("{user}: now trusted {}", pin.display());
        }
        Command::Keygen { .. }
        | Command::Register
        | Command::Fingerprint { .. }
        | Command::Chat => {
            unreachable!("handled before connecting")
        }
    }
    Ok(())
}
