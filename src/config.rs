//! Settings: `config/default.toml` (compiled in, so the binary always has
//! every default), then `config/$CHAT_ENV.toml`, then the file named by
//! `CHAT_CONFIG`, then `CHAT__SECTION__KEY` environment variables, then
//! `PORT` / `MONGODB_URI` / `DATABASE_URL` as Heroku sets them. Unknown keys and bad values
//! are errors that name the key.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;

pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub protocol: ProtocolSettings,
    pub store: StoreSettings,
    pub limits: Limits,
    pub heartbeat: Heartbeat,
    pub rate_limit: RateLimit,
    pub security: Security,
    pub retention: Retention,
    pub cluster: ClusterSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtocolSettings {
    /// The protocol `/ws` speaks: 3, the only one this server has. The
    /// key stays so that a deployment still set to 2 is told plainly that
    /// version 2 is gone, instead of starting as something else.
    pub version: u8,
}

impl ProtocolSettings {
    /// The websocket subprotocol (PROTOCOL.md section 1).
    pub fn subprotocol(&self) -> &'static str {
        crate::client::SUBPROTOCOL
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    pub redis_url: String,
    pub redis_tls_verify: bool,
    pub channel_prefix: String,
    pub heartbeat_ms: u64,
    pub peer_timeout_ms: u64,
}

impl ClusterSettings {
    pub fn enabled(&self) -> bool {
        !self.redis_url.is_empty()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub workers: usize,
    pub room_threads: usize,
    /// The names clients dial (`chat.example.org`, `host:port` for a port
    /// other than the scheme's default): a login proof must sign one of them.
    /// Empty: the websocket request's `Host` header is used.
    pub public_hosts: Vec<String>,
    /// Peers whose `X-Forwarded-For` names the client: IP addresses, or
    /// `"*"` for whatever connects (a platform router such as Heroku's).
    pub trusted_proxies: Vec<String>,
    /// With `public_hosts` empty on an address other than loopback, start
    /// anyway and take the `Host` header as the login host (a relayed login
    /// then works): an explicit opt-out.
    pub trust_host_header: bool,
    /// `/metrics` answers only requests with `Authorization: Bearer <token>`;
    /// empty: `/metrics` is off (404).
    pub metrics_token: String,
}

impl ServerSettings {
    /// Whether `host` only accepts connections from this machine.
    pub fn loopback_only(&self) -> bool {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    pub path: PathBuf,
    pub url: String,
    pub database: String,
    pub group_commit: bool,
    pub max_batch: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_rooms_per_user: usize,
    pub max_members_per_room: usize,
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    pub send_queue: usize,
    pub login_attempts_per_minute: u32,
    pub password_attempts_per_minute: u32,
    pub password_attempts_per_ip_per_minute: u32,
    pub password_hashes: usize,
    pub password_queue: usize,
    pub login_frame_bytes: usize,
    pub login_deadline_secs: u64,
    pub send_queue_bytes: usize,
    pub history_page_bytes: usize,
    /// Joins, leaves and room creations one user may make per minute.
    pub membership_changes_per_minute: u32,
    /// Seconds a room actor no member here uses runs before it stops
    /// (0: never).
    pub room_idle_secs: u64,
    /// `history` requests one connection may have in flight at once.
    pub history_in_flight: usize,
    pub max_connections_per_ip: usize,
    pub registrations_per_ip_per_hour: u32,
    pub handshake_timeout_secs: u64,
    pub tcp_user_timeout_secs: u64,
    /// Live devices one user may have.
    pub max_devices_per_user: u64,
    /// The largest `commit` (commit and GroupInfo together).
    pub max_commit_bytes: usize,
    /// The largest `send` message (one PrivateMessage).
    pub max_message_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub interval_secs: u64,
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
    pub close_after: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Security {
    pub challenge_ttl_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    pub max_age_days: f64,
    pub max_messages_per_room: u64,
    pub purge_interval_secs: f64,
    pub purge_batch: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

impl Settings {
    /// The compiled-in defaults alone (tests start from these).
    pub fn defaults() -> Settings {
        Self::from_builder(Config::builder().add_source(default_source()))
            .expect("config/default.toml is valid")
    }

    /// Loads the layered configuration from the process environment.
    pub fn load() -> Result<Settings, ConfigError> {
        Self::load_from(std::env::vars().collect())
    }

    /// Loads the layered configuration with `vars` as the environment
    /// (relative file names resolve against the current directory).
    pub fn load_from(vars: HashMap<String, String>) -> Result<Settings, ConfigError> {
        let env = |k: &str| vars.get(k).filter(|v| !v.is_empty()).cloned();
        let mut builder = Config::builder().add_source(default_source());
        if let Some(name) = env("CHAT_ENV") {
            builder =
                builder.add_source(File::with_name(&format!("config/{name}")).required(false));
        }
        if let Some(path) = env("CHAT_CONFIG") {
            builder = builder.add_source(File::with_name(&path).required(true));
        }
        let (port, mongodb, database) = (env("PORT"), env("MONGODB_URI"), env("DATABASE_URL"));
        let redis = env("REDIS_URL");
        builder = builder.add_source(
            Environment::with_prefix("CHAT")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("server.public_hosts")
                .with_list_parse_key("server.trusted_proxies")
                .source(Some(vars.into_iter().collect())),
        );
        let set = |b: config::ConfigBuilder<config::builder::DefaultState>, k: &str, v: String| {
            b.set_override(k, v).map_err(|e| ConfigError(e.to_string()))
        };
        if let Some(port) = port {
            builder = set(builder, "server.port", port)?;
            builder = set(builder, "server.host", "0.0.0.0".into())?;
        }
        // Heroku add-ons set these; DATABASE_URL (PostgreSQL) wins if both are.
        if let Some(uri) = mongodb {
            builder = set(builder, "store.url", uri)?;
        }
        if let Some(url) = database {
            builder = set(builder, "store.url", url)?;
        }
        if let Some(url) = redis {
            builder = set(builder, "cluster.redis_url", url)?;
        }
        Self::from_builder(builder)
    }

    fn from_builder(
        builder: config::ConfigBuilder<config::builder::DefaultState>,
    ) -> Result<Settings, ConfigError> {
        let settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError(e.to_string()))?;
        let mut settings = settings;
        settings.validate()?;
        settings.server.public_hosts = settings
            .server
            .public_hosts
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .collect();
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError(format!("{key}: {why}")));
        if let Err(e) = crate::peers::TrustedProxies::parse(&self.server.trusted_proxies) {
            return Err(ConfigError(format!("server.trusted_proxies: {e}")));
        }
        if self.server.public_hosts.is_empty()
            && !self.server.trust_host_header
            && !self.server.loopback_only()
        {
            return Err(ConfigError(format!(
                "server.public_hosts: required when the server binds {} (not loopback): set it \
                 to the names clients dial, e.g. CHAT__SERVER__PUBLIC_HOSTS=chat.example.org \
                 (a login proof signs that name, so a look-alike server cannot relay logins \
                 here), or set server.trust_host_header = true to take the Host header instead",
                self.server.host
            )));
        }
        if self.protocol.version != 3 {
            return bad(
                "protocol.version",
                "must be 3: version 2 is no longer served (its clients cannot talk to \
                 version-3 rooms); remove the setting or set it to 3",
            );
        }
        if self.limits.max_devices_per_user == 0 {
            return bad("limits.max_devices_per_user", "must be at least 1");
        }
        if self.limits.max_connections_per_ip == 0 {
            return bad("limits.max_connections_per_ip", "must be at least 1");
        }
        let not_a_host = |h: &&String| crate::crypto::normalize_host(h, false).is_none();
        if let Some(h) = self.server.public_hosts.iter().find(not_a_host) {
            return Err(ConfigError(format!(
                "server.public_hosts: {h:?} is not a host name with an optional :port \
                 (write chat.example.org, not https://chat.example.org/)"
            )));
        }
        let store = crate::store::StoreKind::from_url(&self.store.url)
            .map_err(|e| ConfigError(e.to_string()))?;
        if self.cluster.enabled() {
            if !store.shared() {
                return bad(
                    "cluster.redis_url",
                    "several processes need the PostgreSQL store (store.url = \"postgres://...\" \
                     or DATABASE_URL): the embedded SQLite file belongs to one process, and the \
                     MongoDB store does not check membership inside its appends",
                );
            }
            let redis = self.cluster.redis_url.as_str();
            if !(redis.starts_with("redis://") || redis.starts_with("rediss://")) {
                return bad("cluster.redis_url", "must start with redis:// or rediss://");
            }
            if self.cluster.heartbeat_ms == 0
                || self.cluster.peer_timeout_ms < 2 * self.cluster.heartbeat_ms
            {
                return bad(
                    "cluster",
                    "heartbeat_ms must be > 0 and peer_timeout_ms at least twice it",
                );
            }
        }
        if self.limits.max_frame_bytes < 1024 {
            return bad("limits.max_frame_bytes", "must be at least 1024");
        }
        if self.limits.login_frame_bytes < 2048 {
            return bad(
                "limits.login_frame_bytes",
                "must be at least 2048 (a register frame with 4096-bit keys is about 1.2 KiB)",
            );
        }
        if self.limits.login_deadline_secs == 0 {
            return bad("limits.login_deadline_secs", "must be at least 1");
        }
        if self.limits.send_queue_bytes < self.limits.max_frame_bytes {
            return bad(
                "limits.send_queue_bytes",
                "must be at least limits.max_frame_bytes",
            );
        }
        if self.limits.send_queue < 16 {
            return bad("limits.send_queue", "must be at least 16");
        }
        if self.limits.max_connections_per_user == 0 {
            return bad("limits.max_connections_per_user", "must be at least 1");
        }
        if self.limits.max_members_per_room == 0 {
            return bad("limits.max_members_per_room", "must be at least 1");
        }
        if self.store.max_batch == 0 {
            return bad("store.max_batch", "must be at least 1");
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        let at_least = |x: f64, min: f64| x.is_finite() && x >= min;
        if !positive(self.rate_limit.per_second) {
            return bad("rate_limit.per_second", "must be a number above 0");
        }
        if !at_least(self.rate_limit.burst, 1.0) {
            return bad("rate_limit.burst", "must be at least 1");
        }
        if self.heartbeat.interval_secs == 0
            || self.heartbeat.timeout_secs <= self.heartbeat.interval_secs
        {
            return bad(
                "heartbeat",
                "interval_secs must be > 0 and below timeout_secs",
            );
        }
        if !at_least(self.retention.max_age_days, 0.0) {
            return bad("retention.max_age_days", "must be 0 or more");
        }
        if !positive(self.retention.purge_interval_secs) {
            return bad("retention.purge_interval_secs", "must be above 0");
        }
        Ok(())
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat.interval_secs)
    }

    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_secs(self.heartbeat.timeout_secs)
    }

    pub fn worker_threads(&self) -> usize {
        or_cores(self.server.workers)
    }

    pub fn room_threads(&self) -> usize {
        or_cores(self.server.room_threads)
    }
}

fn or_cores(n: usize) -> usize {
    if n > 0 {
        n
    } else {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }
}

fn default_source() -> File<config::FileSourceString, FileFormat> {
    File::from_str(DEFAULT_TOML, FileFormat::Toml)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load() {
        let s = Settings::load_from(HashMap::new()).unwrap();
        assert_eq!(s.server.port, 8080);
        assert_eq!(s.server.host, "127.0.0.1");
    }

    #[test]
    fn production_file_and_env_layers() {
        // Cargo runs unit tests in the package root, where config/ lives.
        const NAME: (&str, &str) = ("CHAT__SERVER__PUBLIC_HOSTS", "chat.example.org");
        let s = Settings::load_from(vars(&[("CHAT_ENV", "production"), NAME])).unwrap();
        assert_eq!(s.server.host, "0.0.0.0");
        assert_eq!(s.store.path, PathBuf::from("/data/chat.db"));
        let s = Settings::load_from(vars(&[
            ("CHAT_ENV", "production"),
            ("CHAT__STORE__PATH", "/x.db"),
            NAME,
        ]))
        .unwrap();
        assert_eq!(s.store.path, PathBuf::from("/x.db"));
    }

    #[test]
    fn port_wins_and_binds_everywhere() {
        let s = Settings::load_from(vars(&[
            ("CHAT__SERVER__PORT", "1"),
            ("PORT", "5000"),
            ("CHAT__SERVER__PUBLIC_HOSTS", "chat.example.org"),
        ]))
        .unwrap();
        assert_eq!((s.server.host.as_str(), s.server.port), ("0.0.0.0", 5000));
        let s = Settings::load_from(vars(&[("MONGODB_URI", "mongodb://db")])).unwrap();
        assert_eq!(s.store.url, "mongodb://db");
        let s = Settings::load_from(vars(&[("DATABASE_URL", "postgres://u@db/chat")])).unwrap();
        assert_eq!(s.store.url, "postgres://u@db/chat");
        assert!(!s.cluster.enabled());
    }

    #[test]
    fn cluster_needs_postgres() {
        let err =
            Settings::load_from(vars(&[("REDIS_URL", "redis://127.0.0.1:6379")])).unwrap_err();
        assert!(err.to_string().contains("PostgreSQL"), "{err}");
        let err = Settings::load_from(vars(&[
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("MONGODB_URI", "mongodb://db"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("cluster.redis_url"), "{err}");
        let s = Settings::load_from(vars(&[
            ("REDIS_URL", "rediss://h:6380"),
            ("DATABASE_URL", "postgres://u@db/chat"),
        ]))
        .unwrap();
        assert!(s.cluster.enabled());
        assert_eq!(s.cluster.redis_url, "rediss://h:6380");
    }

    #[test]
    fn public_hosts_from_env() {
        let s = Settings::load_from(vars(&[(
            "CHAT__SERVER__PUBLIC_HOSTS",
            "Chat.Example.org,example.herokuapp.com",
        )]))
        .unwrap();
        assert_eq!(
            s.server.public_hosts,
            vec!["chat.example.org", "example.herokuapp.com"]
        );
        assert!(Settings::defaults().server.public_hosts.is_empty());
        let s = Settings::load_from(vars(&[("CHAT__SERVER__TRUSTED_PROXIES", "*")])).unwrap();
        assert_eq!(s.server.trusted_proxies, vec!["*"]);
        let err =
            Settings::load_from(vars(&[("CHAT__SERVER__TRUSTED_PROXIES", "router")])).unwrap_err();
        assert!(err.to_string().contains("trusted_proxies"), "{err}");
        let err = Settings::load_from(vars(&[(
            "CHAT__SERVER__PUBLIC_HOSTS",
            "https://chat.example.org/",
        )]))
        .unwrap_err();
        assert!(err.to_string().contains("public_hosts"), "{err}");
    }

    /// Issue 20 item 13: on a public address without `public_hosts`, the
    /// Host header decided the login host, so a relayed login worked.
    #[test]
    fn public_hosts_required_off_loopback() {
        let err = Settings::load_from(vars(&[("PORT", "8080")])).unwrap_err();
        assert!(err.to_string().contains("server.public_hosts"), "{err}");
        let err = Settings::load_from(vars(&[("CHAT_ENV", "production")])).unwrap_err();
        assert!(err.to_string().contains("server.public_hosts"), "{err}");
        let s = Settings::load_from(vars(&[
            ("PORT", "8080"),
            ("CHAT__SERVER__PUBLIC_HOSTS", "chat.example.org"),
        ]))
        .unwrap();
        assert_eq!(s.server.host, "0.0.0.0");
        let s = Settings::load_from(vars(&[
            ("PORT", "8080"),
            ("CHAT__SERVER__TRUST_HOST_HEADER", "true"),
        ]))
        .unwrap();
        assert!(s.server.trust_host_header);
        for host in ["127.0.0.1", "::1", "[::1]", "localhost"] {
            Settings::load_from(vars(&[("CHAT__SERVER__HOST", host)])).unwrap();
        }
    }

    #[test]
    fn errors_name_the_key() {
        let err =
            Settings::load_from(vars(&[("CHAT__LIMITS__MAX_FRAME_BYTES", "lots")])).unwrap_err();
        assert!(err.to_string().contains("max_frame_bytes"), "{err}");
        let err = Settings::load_from(vars(&[("CHAT__SERVER__BOGUS", "1")])).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = Settings::load_from(vars(&[("CHAT__HEARTBEAT__TIMEOUT_SECS", "1")])).unwrap_err();
        assert!(err.to_string().contains("heartbeat"), "{err}");
        // An unknown database is refused when the settings load, not later.
        let err = Settings::load_from(vars(&[("CHAT__STORE__URL", "mysql://db")])).unwrap_err();
        assert!(err.to_string().contains("store.url"), "{err}");
    }
}
