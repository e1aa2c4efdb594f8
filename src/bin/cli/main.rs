//! `e2ee-chat`: the terminal client. The identity key and the device's MLS
//! state live in a profile directory; every message is encrypted here and
//! decrypted here, and every credential is checked here (PROTOCOL.md
//! section 7). `chat` is the interactive full-screen mode.
//!
//! Files: this one (arguments and dispatch), `commands` (the one-shot
//! subcommands), `tui` (`chat`'s screen; its network side is `tui_net`),
//! `show` (what both print), `profile` (the profile directory), `transfer`
//! (the portable profile file and its export and import).

mod commands;
mod profile;
mod show;
mod transfer;
mod tui;
mod tui_net;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use e2ee_chat::crypto::{fingerprint_display, KeyPair};

use profile::{CliResult, Profile, ProfileConfig};
pub use show::{fmt_time, owner_request, parse_fingerprint, server_url, OwnerCmd, Shown};

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
    /// USER's devices (yours without USER).
    Devices { user: Option<String> },
    /// Remove one of your devices (a lost one) for good.
    RemoveDevice {
        /// Its id, 32 hex digits (as `devices` prints them).
        device_id: String,
    },
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
        return transfer::import_profile(&cli, &dir, file, *force);
    }
    let profile = Profile::open(&dir)?;
    let url = server_url(cli.server.as_deref(), &profile);
    if let Command::ExportProfile { file, force } = &cli.command {
        return transfer::export_profile(&profile, &url, file, *force);
    }
    let keys = profile.keys()?;
    if let Command::Chat = &cli.command {
        return tui_net::run(profile, url, keys).await;
    }
    commands::run(profile, &url, keys, cli.command).await
}
