//! The baseline: a bare actix websocket relay with no auth, no checks and no
//! store. Every binary frame a connection sends to `/ws?room=R` goes to every
//! connection of room R (the sender too), exactly as the chat server fans a
//! message out. Built the same way as the server (actix-web-actors, one hub
//! actor, TCP_NODELAY), so the ratio shows what the chat server's work costs.

use std::collections::HashMap;
use std::net::TcpListener;

use actix::prelude::*;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actix_web_actors::ws;
use bytes::Bytes;

#[derive(Message, Clone)]
#[rtype(result = "()")]
struct Frame(Bytes);

#[derive(Message)]
#[rtype(result = "()")]
struct Join(String, u64, Recipient<Frame>);

#[derive(Message)]
#[rtype(result = "()")]
struct Leave(String, u64);

#[derive(Message)]
#[rtype(result = "()")]
struct Broadcast(String, Bytes);

#[derive(Default)]
struct Hub {
    rooms: HashMap<String, HashMap<u64, Recipient<Frame>>>,
}

impl Actor for Hub {
    type Context = Context<Self>;
}

impl Handler<Join> for Hub {
    type Result = ();
    fn handle(&mut self, m: Join, _: &mut Context<Self>) {
        self.rooms.entry(m.0).or_default().insert(m.1, m.2);
    }
}

impl Handler<Leave> for Hub {
    type Result = ();
    fn handle(&mut self, m: Leave, _: &mut Context<Self>) {
        if let Some(r) = self.rooms.get_mut(&m.0) {
            r.remove(&m.1);
        }
    }
}

impl Handler<Broadcast> for Hub {
    type Result = ();
    fn handle(&mut self, m: Broadcast, _: &mut Context<Self>) {
        for r in self.rooms.get(&m.0).into_iter().flat_map(|r| r.values()) {
            r.do_send(Frame(m.1.clone()));
        }
    }
}

struct Conn {
    id: u64,
    room: String,
    hub: Addr<Hub>,
}

impl Actor for Conn {
    type Context = ws::WebsocketContext<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        self.hub
            .do_send(Join(self.room.clone(), self.id, ctx.address().recipient()));
    }
    fn stopped(&mut self, _: &mut Self::Context) {
        self.hub.do_send(Leave(self.room.clone(), self.id));
    }
}

impl Handler<Frame> for Conn {
    type Result = ();
    fn handle(&mut self, m: Frame, ctx: &mut Self::Context) {
        ctx.binary(m.0);
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Conn {
    fn handle(&mut self, item: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        match item {
            Ok(ws::Message::Binary(b)) => self.hub.do_send(Broadcast(self.room.clone(), b)),
            Ok(ws::Message::Ping(p)) => ctx.pong(&p),
            Ok(ws::Message::Close(_)) | Err(_) => ctx.stop(),
            _ => {}
        }
    }
}

struct State {
    hub: Addr<Hub>,
    next: std::sync::atomic::AtomicU64,
}

async fn route(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<State>,
) -> actix_web::Result<HttpResponse> {
    let room = req
        .query_string()
        .split('&')
        .find_map(|kv| kv.strip_prefix("room="))
        .unwrap_or("0")
        .to_owned();
    let id = state
        .next
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    ws::WsResponseBuilder::new(
        Conn {
            id,
            room,
            hub: state.hub.clone(),
        },
        &req,
        stream,
    )
    .frame_size(1 << 20)
    .start()
}

/// Starts the relay on its own thread; returns its `ws://` base URL.
pub fn start(workers: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
    let addr = listener.local_addr().expect("relay addr");
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let hub = Hub::default().start();
            let state = web::Data::new(State {
                hub,
                next: Default::default(),
            });
            HttpServer::new(move || {
                App::new()
                    .app_data(state.clone())
                    .route("/ws", web::get().to(route))
            })
            .workers(workers)
            .on_connect(|conn, _| {
                if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
                    let _ = tcp.set_nodelay(true);
                }
            })
            .disable_signals()
            .listen(listener)
            .expect("relay listens")
            .run()
            .await
            .expect("relay runs");
        });
    });
    format!("ws://{addr}/ws")
}
