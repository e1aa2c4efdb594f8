//! The e2ee-chat server binary.
//!
//! `e2ee-chat-server` loads the settings, serves until SIGINT/SIGTERM and
//! shuts down gracefully. `e2ee-chat-server healthcheck` asks the local
//! server's `/healthz` and exits 0 when it answers 200 (used by the
//! Dockerfile's HEALTHCHECK, since the runtime image has no curl).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

use e2ee_chat::config::Settings;

const USAGE: &str = "usage: e2ee-chat-server [healthcheck | --version | --help]

Serves the e2ee-chat websocket API at /ws (plus /healthz and /metrics).
Settings: config/default.toml, config/$CHAT_ENV.toml, $CHAT_CONFIG,
CHAT__SECTION__KEY environment variables, and PORT (binds 0.0.0.0).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let settings = || match Settings::load() {
        Ok(s) => Ok(s),
        Err(e) => {
            eprintln!("e2ee-chat-server: {e}");
            Err(ExitCode::from(2))
        }
    };
    match args.first().map(String::as_str) {
        None => match settings() {
            Ok(s) => serve(s),
            Err(code) => code,
        },
        Some("healthcheck") => match settings() {
            Ok(s) => healthcheck(&s),
            Err(code) => code,
        },
        Some("--version") => {
            println!("e2ee-chat-server {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("--help" | "-h") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("e2ee-chat-server: unknown argument {other:?}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn serve(settings: Settings) -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    log::info!(
        "starting e2ee-chat-server {} on {}:{} (store: {})",
        env!("CARGO_PKG_VERSION"),
        settings.server.host,
        settings.server.port,
        if settings.store.url.is_empty() {
            settings.store.path.display().to_string()
        } else {
            "mongodb".to_string()
        }
    );
    match e2ee_chat::server::start(settings, true) {
        Ok(server) => {
            println!("listening on {}", server.addr);
            server.wait();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("e2ee-chat-server: cannot start: {e}");
            ExitCode::from(1)
        }
    }
}

fn healthcheck(settings: &Settings) -> ExitCode {
    let addr = ("127.0.0.1", settings.server.port);
    let check = || -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(4)))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    };
    match check() {
        Ok(resp) if resp.starts_with("HTTP/1.1 200") => ExitCode::SUCCESS,
        Ok(resp) => {
            eprintln!("unhealthy: {}", resp.lines().next().unwrap_or(""));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}
