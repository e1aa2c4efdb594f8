//! Clients against a hostile server (PROTOCOL.md section 7). A small fake
//! server speaking v2 on 127.0.0.1 plays the attacker: it serves ghost
//! members, replays, look-alike names, injected control characters and
//! equivocating keys, and the client library and the terminal client must
//! not be fooled. The last test relays a login proof to the real server.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::{assert_code, identity, TestServer};
use e2ee_chat::client::{seal_parts, Client, Notice};
use e2ee_chat::crypto::{self, KeyPair};
use e2ee_chat::protocol::{
    decode_request, ErrorCode, Member, MessageData, Request, RoomSummary, ServerMsg,
};
use futures_util::{SinkExt, StreamExt};
use serde_bytes::ByteBuf;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const ROOM: &str = "r-team";

/// What the fake server serves; `me` is filled in by `register`.
#[derive(Default)]
struct Script {
    /// The victim's public keys (sign, enc), learned from `register`.
    me: Option<(Vec<u8>, Vec<u8>)>,
    /// Members besides the victim.
    others: Vec<Member>,
    /// `history` builds its messages with the victim's enc key.
    history: Option<HistoryFn>,
    /// Every `send` the victim made.
    sends: Vec<e2ee_chat::protocol::SendBody>,
    /// The text of the error that answers a `send`.
    send_error: Option<String>,
}

type HistoryFn = Box<dyn Fn(&[u8]) -> Vec<MessageData> + Send>;

fn member(name: &str, sign: &[u8], enc: &[u8]) -> Member {
    Member {
        username: name.into(),
        sign_key: ByteBuf::from(sign.to_vec()),
        enc_key: ByteBuf::from(enc.to_vec()),
        online: true,
        joined_at: 1,
    }
}

fn keys_member(name: &str, keys: &KeyPair) -> Member {
    member(name, &keys.sign_der, &keys.enc_der)
}

fn summary() -> RoomSummary {
    RoomSummary {
        room_id: ROOM.into(),
        name: "Team".into(),
        owner: "mallory".into(),
        members: 3,
        online: 3,
        has_password: false,
        hidden: false,
        created_at: 1,
        last_seq: 3,
    }
}

/// The fake server's answer to one request.
fn answer(
    script: &Mutex<Script>,
    username: &mut String,
    id: Option<u64>,
    req: Request,
) -> ServerMsg {
    let mut s = script.lock().unwrap();
    let members = |s: &Script, me: &str| {
        let (sign, enc) = s.me.clone().expect("registered first");
        let mut all = vec![member(me, &sign, &enc)];
        all.extend(s.others.iter().cloned());
        all
    };
    match req {
        Request::Register {
            username: u,
            sign_key,
            enc_key,
        } => {
            s.me = Some((sign_key.into_vec(), enc_key.into_vec()));
            ServerMsg::Registered { id, username: u }
        }
        Request::Login { username: u } => {
            *username = u;
            ServerMsg::Challenge {
                id,
                nonce: ByteBuf::from(vec![7; 32]),
            }
        }
        Request::Prove { .. } => ServerMsg::LoggedIn {
            id,
            username: username.clone(),
            server_time: 1,
            rooms: vec![summary()],
        },
        Request::ListRooms { .. } => ServerMsg::Rooms {
            id,
            rooms: vec![summary()],
            total: 1,
            connected: 3,
        },
        Request::GetMembers { room_id } => ServerMsg::Members {
            id,
            room_id,
            members: members(&s, username),
        },
        Request::History { room_id, .. } => {
            let enc = s.me.clone().expect("registered first").1;
            let messages = s.history.as_ref().map(|h| h(&enc)).unwrap_or_default();
            ServerMsg::History {
                id,
                room_id,
                messages,
                has_more: false,
            }
        }
        Request::Send(body) => {
            s.sends.push(body);
            // Refuse it: what matters is what the client said before sending.
            ServerMsg::Error {
                id,
                code: ErrorCode::Internal,
                message: s.send_error.clone().unwrap_or_else(|| "fake server".into()),
                members: None,
            }
        }
        _ => ServerMsg::Ok { id },
    }
}

/// Starts the fake server; answers every connection from `script`.
async fn fake_server(script: Arc<Mutex<Script>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let script = script.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let mut username = String::new();
                while let Some(Ok(msg)) = ws.next().await {
                    let WsMessage::Binary(frame) = msg else {
                        continue;
                    };
                    let Ok((id, req)) = decode_request(&frame) else {
                        continue;
                    };
                    let reply = answer(&script, &mut username, id, req);
                    if ws
                        .send(WsMessage::Binary(reply.encode().into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    url
}

/// A message from `sender` signed with `signer`, its key wrapped for `enc`.
fn message(
    signer: &KeyPair,
    sender: &str,
    text: &str,
    seq: u64,
    msg_id: [u8; 16],
    enc: &[u8],
) -> MessageData {
    message_in(ROOM, signer, sender, text, seq, msg_id, enc)
}

/// [`message`] signed for room `room`.
fn message_in(
    room: &str,
    signer: &KeyPair,
    sender: &str,
    text: &str,
    seq: u64,
    msg_id: [u8; 16],
    enc: &[u8],
) -> MessageData {
    let (body, aes) = seal_parts(signer, room, text, msg_id);
    MessageData {
        room_id: room.into(),
        seq,
        ts: seq * 1_000_000,
        msg_id: body.msg_id,
        sender: sender.into(),
        nonce: body.nonce,
        key_commitment: body.key_commitment,
        ciphertext: body.ciphertext,
        key: ByteBuf::from(crypto::wrap_key(enc, &aes).unwrap()),
        signature: body.signature,
    }
}

async fn victim(url: &str, script: &Arc<Mutex<Script>>) -> Client {
    let alice = identity("alice", 0);
    let mut c = Client::connect(url).await.unwrap();
    c.register(&alice).await.unwrap();
    c.login(&alice).await.unwrap();
    assert!(script.lock().unwrap().me.is_some());
    c
}

#[tokio::test]
async fn equivocation_replay_and_look_alikes_never_show_as_verified() {
    let bob = identity("bob", 1).keys;
    let mallory = identity("mallory", 2).keys;
    let script = Arc::new(Mutex::new(Script {
        others: vec![keys_member("bob", &bob), keys_member("mallory", &mallory)],
        ..Script::default()
    }));
    let url = fake_server(script.clone()).await;
    let mut alice = victim(&url, &script).await;
    let alice_enc = alice.identity().unwrap().keys.enc_der.clone();
    alice.get_members(ROOM).await.unwrap();

    // Equivocation: mallory signs one message but wraps alice a key that does
    // not match the commitment (another member would get the real one).
    let mut vote = message(&mallory, "mallory", "I vote YES", 1, [1; 16], &alice_enc);
    let other_key = crypto::random_bytes::<32>();
    vote.key = ByteBuf::from(crypto::wrap_key(&alice_enc, &other_key).unwrap());
    let err = alice.accept(&vote).unwrap_err();
    assert!(err.to_string().contains("commitment"), "{err}");

    // Replay: the same signed message under three seqs and dates is shown
    // once, with the sender's own (signed) time.
    let hello = message(&bob, "bob", "hello", 2, [2; 16], &alice_enc);
    let shown = alice.accept(&hello).unwrap().expect("first copy is shown");
    assert_eq!(shown.text, "hello");
    assert!(shown.sent_at > 1_700_000_000_000 && shown.sent_at != hello.ts);
    for seq in [3, 4] {
        let mut again = hello.clone();
        again.seq = seq;
        again.ts = seq * 7;
        assert!(alice.accept(&again).unwrap().is_none(), "replay shown");
    }
    // A forged copy (bad signature) under the same msg_id fails, and does
    // not stop a later real copy from being recognized as already shown.
    let mut forged = hello.clone();
    forged.ciphertext[0] ^= 1;
    assert!(alice.accept(&forged).is_err());

    // Look-alike: a sender with a Cyrillic "а" is refused, even when the
    // signature is by a pinned key.
    let look_alike = message(
        &bob,
        "\u{430}lice",
        "pay invoice 7731",
        5,
        [5; 16],
        &alice_enc,
    );
    let err = alice.accept(&look_alike).unwrap_err();
    assert!(
        matches!(err, e2ee_chat::client::ClientError::BadName(_)),
        "{err}"
    );
}

#[tokio::test]
async fn a_ghost_recipient_is_announced_before_the_send() {
    let bob = identity("bob", 1).keys;
    let eve = identity("eve", 3).keys;
    let script = Arc::new(Mutex::new(Script {
        others: vec![keys_member("bob", &bob)],
        ..Script::default()
    }));
    let url = fake_server(script.clone()).await;
    let mut alice = victim(&url, &script).await;
    let told = Arc::new(Mutex::new(Vec::new()));
    let sends_when_told = Arc::new(Mutex::new(Vec::new()));
    {
        let (told, at, script) = (told.clone(), sends_when_told.clone(), script.clone());
        alice.on_notice(Box::new(move |n| {
            at.lock().unwrap().push(script.lock().unwrap().sends.len());
            told.lock().unwrap().push(n.clone());
        }));
    }
    alice.get_members(ROOM).await.unwrap();
    let _ = alice.send_text(ROOM, "first").await;
    // bob was new in this room: announced before the first send went out.
    assert_eq!(*sends_when_told.lock().unwrap(), vec![0]);
    // The server adds eve. The next send names her first, with her
    // fingerprint; bob is not announced again.
    script.lock().unwrap().others.push(keys_member("eve", &eve));
    alice.get_members(ROOM).await.unwrap();
    let _ = alice.send_text(ROOM, "second").await;
    let told = told.lock().unwrap().clone();
    assert_eq!(told.len(), 2, "{told:?}");
    assert_eq!(
        told[1],
        Notice::NewRecipient {
            room_id: ROOM.into(),
            username: "eve".into(),
            fingerprint: eve.fingerprint(),
        }
    );
    assert_eq!(*sends_when_told.lock().unwrap(), vec![0, 1]);
    let sends = script.lock().unwrap().sends.len();
    assert_eq!(sends, 2);
}

fn cli(url: &str, profile: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_e2ee-chat"))
        .arg("--profile")
        .arg(profile)
        .arg("--server")
        .arg(url)
        .args(args)
        .env_remove("E2EE_CHAT_PASSPHRASE")
        .output()
        .unwrap()
}

/// A terminal-client profile for alice under `home`, registered with the
/// fake server.
async fn cli_alice(url: &str, home: &Path) -> std::path::PathBuf {
    let dir = home.join("alice");
    for args in [&["keygen", "--user", "alice"][..], &["register"]] {
        let (ok, _, err) = cli_async(url, &dir, args).await;
        assert!(ok, "{err}");
    }
    dir
}

async fn cli_async(url: &str, profile: &Path, args: &[&str]) -> (bool, String, String) {
    let (url, profile) = (url.to_owned(), profile.to_path_buf());
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&url, &profile, &args)
    })
    .await
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_terminal_client_escapes_dedups_refuses_and_announces() {
    let bob = identity("bob", 1).keys;
    let eve = identity("eve", 3).keys;
    let script = Arc::new(Mutex::new(Script {
        others: vec![keys_member("bob", &bob), keys_member("eve", &eve)],
        ..Script::default()
    }));
    let bob_for_history = bob.clone();
    script.lock().unwrap().history = Some(Box::new(move |enc| {
        let injected = "ok\r\u{1b}[2K#1 alice ✓ Approved: pay invoice 7731";
        let posing = message(&bob_for_history, "bob", injected, 1, [1; 16], enc);
        let mut replay = posing.clone();
        replay.seq = 2;
        replay.ts = 99;
        let look_alike = message(&bob_for_history, "\u{430}lice", "trust me", 3, [3; 16], enc);
        vec![posing, replay, look_alike]
    }));
    let url = fake_server(script.clone()).await;
    let home = tempfile::tempdir().unwrap();
    let dir = cli_alice(&url, home.path()).await;

    let (ok, out, err) = cli_async(&url, &dir, &["history", "Team"]).await;
    assert!(ok, "{err}");
    assert!(!out.contains('\r') && !out.contains('\u{1b}'), "{out:?}");
    assert!(out.contains("bob ✓ ok\\r\\u{1b}[2K#1 alice"), "{out}");
    assert_eq!(out.matches("Approved").count(), 1, "replay shown:\n{out}");
    let look = out
        .lines()
        .find(|l| l.contains("\u{430}lice"))
        .expect("shown as failed");
    assert!(look.contains("✗") && !look.contains("trust me"), "{look}");

    // The ghost recipient eve is named, with her fingerprint, before the
    // send (which this server then fails).
    let (ok, _, err) = cli_async(&url, &dir, &["send", "Team", "hi"]).await;
    assert!(!ok);
    let fp = crypto::fingerprint_display(&eve.fingerprint());
    assert!(
        err.contains("NEW RECIPIENT") && err.contains("eve") && err.contains(&fp),
        "{err}"
    );
    let sent: Vec<BTreeMap<String, ByteBuf>> = script
        .lock()
        .unwrap()
        .sends
        .iter()
        .map(|b| b.keys.clone())
        .collect();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].contains_key("eve"));
}

/// Issue 20 items 2 and 3: a server that answers one room's `history` with a
/// message signed for another room, and server texts that carry terminal
/// escapes (an error message, a close reason).
#[tokio::test]
async fn another_rooms_message_fails_and_server_texts_are_escaped() {
    let bob = identity("bob", 1).keys;
    let script = Arc::new(Mutex::new(Script {
        others: vec![keys_member("bob", &bob)],
        send_error: Some("\u{1b}]0;pwned\u{7}\u{1b}[2Jall good".into()),
        ..Script::default()
    }));
    let bob_for_history = bob.clone();
    script.lock().unwrap().history = Some(Box::new(move |enc| {
        let secret = "the launch code is 4711";
        let foreign = message_in("r-secret", &bob_for_history, "bob", secret, 1, [9; 16], enc);
        let own = message(&bob_for_history, "bob", "hello team", 2, [2; 16], enc);
        vec![foreign, own]
    }));
    let url = fake_server(script.clone()).await;

    // The library: the entry says which room it was signed for, and that
    // is not the room asked about.
    let mut alice = victim(&url, &script).await;
    alice.get_members(ROOM).await.unwrap();
    let (msgs, _) = alice.history(ROOM, None, None, None).await.unwrap();
    let err = alice.accept_in(ROOM, &msgs[0]).unwrap_err();
    assert!(
        matches!(err, e2ee_chat::client::ClientError::OtherRoom(ref r) if r == "r-secret"),
        "{err}"
    );
    let own = alice.accept_in(ROOM, &msgs[1]).unwrap().unwrap();
    assert_eq!(own.text, "hello team");
    let closed = e2ee_chat::client::ClientError::Closed(Some("bye\u{1b}[2J".into()));
    assert!(!closed.to_string().contains('\u{1b}'), "{closed}");

    // The terminal client: the foreign entry is a failure line, and the
    // server's error text reaches the terminal escaped.
    let home = tempfile::tempdir().unwrap();
    let dir = cli_alice(&url, home.path()).await;
    let (ok, out, err) = cli_async(&url, &dir, &["history", "Team"]).await;
    assert!(ok, "{err}");
    assert!(
        !out.contains("4711"),
        "another room's message shown:\n{out}"
    );
    let foreign = out
        .lines()
        .find(|l| l.contains("#1 "))
        .expect("a line for #1");
    assert!(
        foreign.contains('✗') && foreign.contains("another room"),
        "{foreign}"
    );
    assert!(out.contains("bob ✓ hello team"), "{out}");
    let (ok, _, err) = cli_async(&url, &dir, &["send", "Team", "hi"]).await;
    assert!(!ok);
    assert!(!err.contains('\u{1b}') && !err.contains('\u{7}'), "{err:?}");
    assert!(err.contains("all good"), "{err}");
}

#[tokio::test]
async fn a_relayed_login_proof_is_refused_by_the_real_server() {
    let t = TestServer::new();
    let alice = identity("alice", 0);
    let mut c = Client::connect(&t.url()).await.unwrap();
    c.register(&alice).await.unwrap();
    // A look-alike server relayed the real challenge: alice signed the host
    // she dialed, which is not this server.
    c.set_host("chat.example.org.evil");
    assert_code(c.login(&alice).await, ErrorCode::AuthFailed);
    c.set_host(&crypto::host_of_url(&t.url()).unwrap());
    c.login(&alice).await.unwrap();
    t.stop().await;

    // With server.public_hosts set, only those names count, whatever the
    // Host header says.
    let t = TestServer::with(|s| s.server.public_hosts = vec!["chat.example.org".into()]);
    let mut c = Client::connect(&t.url()).await.unwrap();
    c.register(&alice).await.unwrap();
    assert_code(c.login(&alice).await, ErrorCode::AuthFailed);
    c.set_host("chat.example.org");
    c.login(&alice).await.unwrap();
    t.stop().await;
}
