//! `e2ee-chat`: the terminal client. Key files and trust on first use live
//! in a profile directory; every message is encrypted and signed here and
//! verified and decrypted here. `chat` is the interactive full-screen mode.

mod profile;
mod transfer;
mod tui;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use e2ee_chat::client::display::escape;
use e2ee_chat::client::{Client, ClientError, Identity, Notice};
use e2ee_chat::crypto::{fingerprint_display, KeyPair};
use e2ee_chat::protocol::{MessageData, Request, RoomSummary};

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
    /// Write the profile's keys, sealed under a passphrase, to FILE: the
    /// format the web client imports (and exports).
    ExportProfile {
        file: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Make this profile from FILE, exported by the web client or by
    /// `export-profile`; the keys are stored encrypted with the same passphrase.
    ImportProfile {
        file: PathBuf,
        /// Replace existing keys.
        #[arg(long)]
        force: bool,
    },
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
    /// Trust USER's keys with FINGERPRINT, which you compared with them (in
    /// person, or over another channel): refused unless the server serves
    /// exactly those keys.
    Trust {
        user: String,
        /// 64 hex digits, spaces allowed (as `e2ee-chat fingerprint` prints them).
        #[arg(required = true, num_args = 1..)]
        fingerprint: Vec<String>,
    },
    /// Remove USER from a room you own (they may rejoin).
    Kick { room: String, user: String },
    /// Remove USER from a room you own and keep them out.
    Ban { room: String, user: String },
    /// Let a banned USER join again.
    Unban { room: String, user: String },
    /// Rename a room you own.
    Rename { room: String, name: String },
    /// Set the password of a room you own (without one: remove it).
    SetPassword {
        room: String,
        password: Option<String>,
    },
    /// Delete a room you own, with all its messages.
    Delete { room: String },
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
    for (room_id, users) in &pins.recipients {
        client.set_told_recipients(room_id, users.iter().cloned());
    }
    client.on_notice(Box::new(|n| eprintln!("{}", describe(n))));
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

/// A notice as a line for people.
pub fn describe(n: &Notice) -> String {
    match n {
        Notice::NewRecipient {
            room_id,
            username,
            fingerprint,
        } => format!(
            "NEW RECIPIENT in {}: {} (fingerprint {}) will be able to read what you send there",
            escape(room_id),
            escape(username),
            fingerprint_display(fingerprint)
        ),
    }
}

/// A fingerprint as typed by a person: hex digits, any case, spaces ignored.
pub fn parse_fingerprint(words: &[String]) -> CliResult<[u8; 32]> {
    let hex_digits: String = words
        .concat()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let bytes = hex::decode(hex_digits.to_ascii_lowercase())
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or("a fingerprint is 64 hex digits (spaces allowed)")?;
    let mut fp = [0u8; 32];
    fp.copy_from_slice(&bytes);
    Ok(fp)
}

impl Connected {
    /// Saves users seen for the first time and the recipients announced, and
    /// returns the users whose keys changed.
    pub fn persist_pins(&mut self) -> CliResult<Vec<String>> {
        let mut changed = false;
        for (room_id, users) in self.client.told_recipients() {
            let saved = self.pins.recipients.entry(room_id.clone()).or_default();
            for u in users {
                changed |= saved.insert(u.clone());
            }
        }
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
                 with {user} in person, then run `e2ee-chat trust {user} FINGERPRINT`."
            );
        }
        Ok(())
    }

    /// Trusts `m`'s keys if their fingerprint is `wanted` (the one the user
    /// compared with them); refuses, changing nothing, if the server serves
    /// other keys. Returns the pin it replaced, if different.
    pub fn trust(
        &mut self,
        m: &e2ee_chat::protocol::Member,
        wanted: [u8; 32],
    ) -> CliResult<Option<Pin>> {
        let user = escape(&m.username);
        let served = e2ee_chat::crypto::fingerprint(&m.sign_key, &m.enc_key);
        if served != wanted {
            return Err(format!(
                "NOT trusted: the server serves keys for {user} with fingerprint\n  {}\n\
                 which is not the one you gave\n  {}\n\
                 Check it with {user} again; the server may be lying about their keys.",
                fingerprint_display(&served),
                fingerprint_display(&wanted)
            ));
        }
        self.client
            .pin_keys(&m.username, &m.sign_key, &m.enc_key)
            .map_err(|e| e.to_string())?;
        let pin = Pin::new(&m.sign_key, &m.enc_key);
        let old = self.pins.users.insert(m.username.clone(), pin.clone());
        self.profile.save_pins(&self.pins)?;
        Ok(old.filter(|o| *o != pin))
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

/// One message as shown: the sender's signed time when it verified (else
/// the server's), the mark, and the escaped text.
pub struct Shown {
    pub seq: u64,
    pub time: u64,
    pub sender: String,
    pub mark: &'static str,
    pub text: String,
}

/// How a message is shown: its text only when it verified and decrypted
/// with the sender's pinned keys; `None` for a copy of one already shown
/// (a replay). Everything from the network is escaped.
pub fn render(client: &mut Client, room_id: &str, m: &MessageData) -> Option<Shown> {
    let shown = |time, mark, text: String| Shown {
        seq: m.seq,
        time,
        sender: escape(&m.sender),
        mark,
        text,
    };
    if client.key_changes.contains(&m.sender) {
        return Some(shown(
            m.ts,
            "!",
            "[untrusted: the sender's keys changed; not shown]".into(),
        ));
    }
    match client.accept_in(room_id, m) {
        Ok(Some(d)) => Some(shown(d.sent_at, "✓", escape(&d.text))),
        Ok(None) => None,
        Err(e) => Some(shown(
            m.ts,
            "✗",
            format!("[failed: {}]", escape(&e.to_string())),
        )),
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
    if let Command::ImportProfile { file, force } = &cli.command {
        return import_profile(&cli, &dir, file, *force);
    }
    let profile = Profile::open(&dir)?;
    let url = server_url(cli.server.as_deref(), &profile);
    if let Command::ExportProfile { file, force } = &cli.command {
        return export_profile(&profile, &url, file, *force);
    }
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
    }
    Ok(())
}

fn export_profile(
    profile: &Profile,
    url: &str,
    path: &std::path::Path,
    force: bool,
) -> CliResult<()> {
    if !force && path.exists() {
        return Err(format!(
            "{} exists: pick another name, or --force to replace it",
            path.display()
        ));
    }
    let keys = profile.keys()?;
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin());
    let pw = profile::passphrase(interactive, !profile.keys_encrypted())?.ok_or_else(|| {
        format!(
            "a profile file needs a passphrase: set {}",
            profile::PASSPHRASE_ENV
        )
    })?;
    let file = transfer::export(&profile.config.username, Some(url.to_owned()), &keys, &pw)?;
    let text = serde_json::to_string_pretty(&file).map_err(|e| e.to_string())? + "\n";
    write_private(path, text.as_bytes(), force).map_err(|e| format!("{}: {e}", path.display()))?;
    println!(
        "profile of {} written to {} (import it in the web client, or with `e2ee-chat import-profile`)",
        profile.config.username,
        path.display()
    );
    Ok(())
}

fn import_profile(
    cli: &Cli,
    dir: &std::path::Path,
    path: &std::path::Path,
    force: bool,
) -> CliResult<()> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if size > transfer::MAX_FILE_BYTES {
        return Err(format!(
            "{} is too large for a profile file",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin());
    let pw = profile::passphrase(interactive, false)?.ok_or_else(|| {
        format!(
            "the profile file's passphrase is needed: set {}",
            profile::PASSPHRASE_ENV
        )
    })?;
    let (file, keys) = transfer::import(&text, &pw)?;
    // The file's server is taken only when --server names none, and the
    // user is told which it is: a file could point at any server.
    let server = match (&cli.server, &file.server) {
        (Some(given), _) => Some(given.clone()),
        (None, Some(named)) => {
            let named = escape(named);
            println!("server: {named} (named by the file; use --server to choose another)");
            file.server.clone()
        }
        (None, None) => None,
    };
    let config = ProfileConfig {
        username: file.username.clone(),
        server,
    };
    let p = Profile::create(dir, config, &keys, Some(&pw), force)?;
    println!(
        "profile of {} imported into {}",
        file.username,
        p.dir.display()
    );
    println!("fingerprint: {}", fingerprint_display(&keys.fingerprint()));
    Ok(())
}

/// Writes a file only its owner can read (0600 on Unix): a profile file
/// holds the encrypted private keys. Without `replace`, an existing file is
/// never touched.
fn write_private(path: &std::path::Path, data: &[u8], replace: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if replace {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path)?;
    #[cfg(unix)]
    {
        // A replaced file keeps its old mode unless set again.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(data)?;
    f.sync_all()
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
