//! Wiring: opens the store, starts the Registry and the room arbiters, and
//! serves `/ws`, `/healthz`, `/metrics` and the web client ([`crate::web`])
//! with actix-web.
//!
//! [`start`] runs the whole server on a thread of its own with its own actix
//! `System` and returns once the port is bound, so the binary and the tests
//! start it the same way. Stopping is graceful: the HTTP server stops, the
//! store finishes and commits every pending write, then the threads end.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use actix::prelude::*;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actix_web_actors::ws;

use crate::cluster::Cluster;
use crate::config::Settings;
use crate::peers::{Peers, TrustedProxies};
use crate::registry::Registry;
use crate::retention;
use crate::session::Session;
use crate::store::SharedStore;

#[derive(Clone)]
struct AppState {
    registry: Addr<Registry>,
    settings: Arc<Settings>,
    store: SharedStore,
    /// Open websocket sessions of this server (limits.max_connections).
    open: Arc<std::sync::atomic::AtomicUsize>,
    peers: Arc<Peers>,
    proxies: TrustedProxies,
    health: Arc<Health>,
}

/// `/healthz` asks the store at most once per [`Health::FRESH`]: answers in
/// between reuse the last result, and concurrent requests wait for the one
/// check in flight, so a flood of health checks is not a flood of queries.
#[derive(Default)]
struct Health {
    last: tokio::sync::Mutex<Option<(std::time::Instant, bool)>>,
}

impl Health {
    const FRESH: Duration = Duration::from_secs(1);

    async fn check(&self, store: &SharedStore) -> bool {
        let mut last = self.last.lock().await;
        if let Some((at, ok)) = *last {
            if at.elapsed() < Self::FRESH {
                return ok;
            }
        }
        let ok = match tokio::time::timeout(Duration::from_secs(2), store.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                log::warn!("health check: {e}");
                false
            }
            Err(_) => {
                log::warn!("health check: the store did not answer within 2 s");
                false
            }
        };
        *last = Some((std::time::Instant::now(), ok));
        ok
    }
}

async fn ws_route(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<AppState>,
) -> actix_web::Result<HttpResponse> {
    let open = state.open.load(std::sync::atomic::Ordering::Relaxed);
    if open >= state.settings.limits.max_connections {
        log::warn!("refusing a connection: {open} open (limits.max_connections)");
        return Ok(HttpResponse::ServiceUnavailable().body("too many connections\n"));
    }
    let Some(peer) = req.peer_addr() else {
        return Ok(HttpResponse::BadRequest().body("no peer address\n"));
    };
    let forwarded: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .map(|h| h.to_str().unwrap_or("?"))
        .collect();
    let ip = state.proxies.client_ip(peer.ip(), forwarded.into_iter());
    let Some(slot) = state.peers.connect(ip) else {
        log::warn!("refusing a connection from {ip}: limits.max_connections_per_ip");
        return Ok(HttpResponse::TooManyRequests().body("too many connections from your address\n"));
    };
    let session = Session::new(
        state.registry.clone(),
        state.settings.clone(),
        state.open.clone(),
        login_hosts(&state.settings, &req),
        slot,
    );
    ws::WsResponseBuilder::new(session, &req, stream)
        .protocols(&[state.settings.protocol.subprotocol()])
        .frame_size(state.settings.limits.max_frame_bytes)
        .start()
}

/// The hosts a login proof on this connection may sign: the configured
/// public names, else the request's `Host` header (as `ws` and as `wss`, since
/// behind a TLS proxy the server cannot tell which one the client dialed).
fn login_hosts(settings: &Settings, req: &HttpRequest) -> Arc<[String]> {
    if !settings.server.public_hosts.is_empty() {
        return settings.server.public_hosts.clone().into();
    }
    let header = req
        .headers()
        .get(actix_web::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let mut hosts: Vec<String> = [false, true]
        .into_iter()
        .filter_map(|secure| crate::crypto::normalize_host(header, secure))
        .collect();
    hosts.dedup();
    hosts.into()
}

/// 200 `ok` or 503 `unavailable`: nothing about the store's internals (the
/// reason goes to the log).
async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    if state.health.check(&state.store).await {
        HttpResponse::Ok().content_type("text/plain").body("ok\n")
    } else {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("unavailable\n")
    }
}

/// Prometheus text for a scraper holding `server.metrics_token`; 404 for
/// everyone else (users online and room counts are not public).
async fn metrics_route(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let token = state.settings.server.metrics_token.as_bytes();
    let given = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|h| h.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    if token.is_empty() || !crate::crypto::constant_time_eq(given, token) {
        return HttpResponse::NotFound().finish();
    }
    let mut body = crate::metrics::render();
    if let Ok((users, rooms, running)) = state.registry.send(crate::registry::Stats).await {
        body.push_str(&format!(
            "# HELP chat_users_online users with a logged-in connection\n# TYPE chat_users_online gauge\nchat_users_online {users}\n\
             # HELP chat_rooms rooms in the directory\n# TYPE chat_rooms gauge\nchat_rooms {rooms}\n\
             # HELP chat_rooms_running room actors running (idle ones stop)\n# TYPE chat_rooms_running gauge\nchat_rooms_running {running}\n"
        ));
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(body)
}

/// A server running on its own thread.
pub struct RunningServer {
    pub addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    thread: Option<JoinHandle<()>>,
}

impl RunningServer {
    /// `ws://` URL of the websocket endpoint.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops gracefully: every acknowledged write is on disk when this returns.
    pub async fn stop(mut self) {
        self.handle.stop(true).await;
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    /// Blocks until the server stops (on SIGINT/SIGTERM when signals are on).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the server; returns when it listens. With `handle_signals`,
/// SIGINT/SIGTERM stop it gracefully.
pub fn start(settings: Settings, handle_signals: bool) -> std::io::Result<RunningServer> {
    let listener = TcpListener::bind((settings.server.host.as_str(), settings.server.port))?;
    let addr = listener.local_addr()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("chat-main".into())
        .spawn(move || {
            let system = actix_rt::System::new();
            system.block_on(async move {
                match serve(settings, listener, handle_signals).await {
                    Ok((server, store, arbiters, purger)) => {
                        let _ = tx.send(Ok(server.handle()));
                        if let Err(e) = server.await {
                            log::error!("http server: {e}");
                        }
                        purger.abort();
                        log::info!("flushing the store");
                        let _ = store.close().await;
                        for a in arbiters {
                            a.stop();
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
            log::info!("server stopped");
        })?;
    let handle = rx
        .recv()
        .map_err(|_| std::io::Error::other("server thread died at start"))??;
    log::info!("listening on {addr}");
    Ok(RunningServer {
        addr,
        handle,
        thread: Some(thread),
    })
}

type Started = (
    actix_web::dev::Server,
    SharedStore,
    Vec<ArbiterHandle>,
    tokio::task::JoinHandle<()>,
);

async fn serve(
    settings: Settings,
    listener: TcpListener,
    handle_signals: bool,
) -> std::io::Result<Started> {
    let settings = Arc::new(settings);
    let store = crate::store::open(&settings)
        .await
        .map_err(std::io::Error::other)?;
    let arbiters: Vec<ArbiterHandle> = (0..settings.room_threads())
        .map(|_| Arbiter::new().handle())
        .collect();
    let registry = {
        let (store, settings, arbiters) = (store.clone(), settings.clone(), arbiters.clone());
        let mut failed = None;
        let registry = Registry::create(|ctx| {
            let cluster = if settings.cluster.enabled() {
                match Cluster::start(&settings.cluster, ctx.address().recipient()) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        failed = Some(e);
                        None
                    }
                }
            } else {
                None
            };
            Registry::new(store, settings, arbiters, cluster)
        });
        if let Some(e) = failed {
            return Err(std::io::Error::other(e));
        }
        registry
    };
    let purger = retention::spawn(store.clone(), settings.retention.clone());
    let state = AppState {
        registry,
        settings: settings.clone(),
        store: store.clone(),
        open: Default::default(),
        peers: Peers::new(
            settings.limits.max_connections_per_ip,
            settings.limits.registrations_per_ip_per_hour,
        ),
        proxies: TrustedProxies::parse(&settings.server.trusted_proxies)
            .map_err(std::io::Error::other)?,
        health: Arc::default(),
    };
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .wrap(crate::web::default_headers())
            .configure(crate::web::routes)
            .route("/ws", web::get().to(ws_route))
            .route("/healthz", web::get().to(healthz))
            .route("/metrics", web::get().to(metrics_route))
    })
    .workers(settings.worker_threads())
    .client_request_timeout(Duration::from_secs(settings.limits.handshake_timeout_secs))
    .on_connect({
        let user_timeout = settings.limits.tcp_user_timeout_secs;
        move |conn, _| {
            if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
                let _ = tcp.set_nodelay(true);
                if user_timeout > 0 {
                    let sock = socket2::SockRef::from(tcp);
                    let _ = sock.set_tcp_user_timeout(Some(Duration::from_secs(user_timeout)));
                }
            }
        }
    })
    .shutdown_timeout(2)
    .listen(listener)?;
    if !handle_signals {
        server = server.disable_signals();
    }
    Ok((server.run(), store, arbiters, purger))
}
