//! The e2ee-chat server binary: loads the settings, starts the server and
//! waits for SIGINT/SIGTERM, then shuts down gracefully.

use e2ee_chat::config::Settings;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("e2ee-chat-server: {e}");
            std::process::exit(2);
        }
    };
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
        }
        Err(e) => {
            eprintln!("e2ee-chat-server: cannot start: {e}");
            std::process::exit(1);
        }
    }
}
