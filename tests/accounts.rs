//! Accounts and devices over real sockets: registration with a proof of possession, login
//! proved by the identity key with a device certificate, `list_devices`,
//! `remove_device`, and every error of those steps, each checked to change
//! nothing. Identity keys are the fixture key pairs' signing keys.

mod common;

use common::TestServer;
use e2ee_chat::client::conn::{Conn, IdentityPair};
use e2ee_chat::client::mls::Device;
use e2ee_chat::client::ClientError;
use e2ee_chat::protocol::{DeviceInfo, Request, ServerMsg};
use e2ee_chat::protocol::{ErrorCode, PlainMsg, PlainRequest};
use serde_bytes::ByteBuf;

fn identity(name: &str, n: usize) -> IdentityPair {
    let pairs = &common::fixtures().pairs;
    IdentityPair::new(name, pairs[n % pairs.len()].sign.clone())
}

fn device(id: &IdentityPair) -> Device {
    Device::new(&id.username, |m| id.sign(m))
}

async fn connect(server: &TestServer) -> Conn {
    Conn::connect(&server.url()).await.expect("connects")
}

/// `name` registered and logged in with a new device.
async fn user(server: &TestServer, name: &str, n: usize) -> (Conn, IdentityPair, Device) {
    let id = identity(name, n);
    let dev = device(&id);
    let mut c = connect(server).await;
    c.register(&id).await.expect("registers");
    c.login(&id, &dev.certificate).await.expect("logs in");
    (c, id, dev)
}

fn code(result: Result<ServerMsg, ClientError>) -> ErrorCode {
    match result {
        Err(e) => e
            .code()
            .unwrap_or_else(|| panic!("not an error reply: {e}")),
        Ok(msg) => panic!("expected an error, got {msg:?}"),
    }
}

async fn devices(c: &mut Conn, username: &str) -> Vec<DeviceInfo> {
    match c
        .request(&Request::ListDevices {
            username: username.into(),
        })
        .await
        .unwrap()
    {
        ServerMsg::Devices { devices, .. } => devices,
        other => panic!("not devices: {other:?}"),
    }
}

/// Whether this connection is still not logged in.
async fn not_logged_in(c: &mut Conn) {
    let result = c
        .request(&Request::ListDevices {
            username: "alice".into(),
        })
        .await;
    assert_eq!(code(result), ErrorCode::NotLoggedIn);
}

#[tokio::test]
async fn register_login_and_list_devices() {
    let server = TestServer::new();
    let alice = identity("alice", 0);
    let phone = device(&alice);
    let mut c = connect(&server).await;
    c.register(&alice).await.unwrap();
    let logged_in = c.login(&alice, &phone.certificate).await.unwrap();
    let ServerMsg::LoggedIn {
        username,
        device_id,
        rooms,
        ..
    } = logged_in
    else {
        panic!("not logged_in: {logged_in:?}");
    };
    assert_eq!(username, "alice");
    assert_eq!(device_id.as_slice(), phone.device_id);
    assert!(rooms.is_empty());

    // A second device of the same user.
    let laptop = device(&alice);
    let mut c2 = connect(&server).await;
    c2.login(&alice, &laptop.certificate).await.unwrap();
    let listed = devices(&mut c, "alice").await;
    let ids: Vec<&[u8]> = listed.iter().map(|d| d.device_id.as_slice()).collect();
    assert_eq!(ids, vec![&phone.device_id[..], &laptop.device_id[..]]);
    assert_eq!(listed[0].device_certificate.as_slice(), phone.certificate);

    // The same device again: known, nothing added.
    let mut c3 = connect(&server).await;
    c3.login(&alice, &phone.certificate).await.unwrap();
    assert_eq!(devices(&mut c3, "alice").await.len(), 2);
    // Anyone logged in may list anyone's devices; an unknown user is an error.
    let (mut bob, _, _) = user(&server, "bob", 1).await;
    assert_eq!(devices(&mut bob, "alice").await.len(), 2);
    let result = bob
        .request(&Request::ListDevices {
            username: "nobody".into(),
        })
        .await;
    assert_eq!(code(result), ErrorCode::UnknownUser);
    server.stop().await;
}

#[tokio::test]
async fn registration_errors_register_nobody() {
    let server = TestServer::new();
    let alice = identity("alice", 0);
    let mut c = connect(&server).await;
    let register = |username: &str, key: Vec<u8>, proof: Vec<u8>| Request::Register {
        username: username.into(),
        identity_key: ByteBuf::from(key),
        proof: ByteBuf::from(proof),
    };
    // A proof for another name, or by another key.
    let proof_for_bob = alice.sign(&e2ee_chat::identity::register_proof_input(c.host(), "bob"));
    let result = c
        .request(&register("alice", alice.der.clone(), proof_for_bob))
        .await;
    assert_eq!(code(result), ErrorCode::AuthFailed);
    let other = identity("alice", 1);
    let proof_by_other = other.sign(&e2ee_chat::identity::register_proof_input(
        c.host(),
        "alice",
    ));
    let result = c
        .request(&register("alice", alice.der.clone(), proof_by_other))
        .await;
    assert_eq!(code(result), ErrorCode::AuthFailed);
    // A key that is not a 2048–4096-bit RSA key with e = 65537.
    let weak = common::fixtures().rsa1024_public.clone();
    let result = c.request(&register("alice", weak, vec![1; 128])).await;
    assert_eq!(code(result), ErrorCode::InvalidKey);
    let result = c
        .request(&register("Al ice", alice.der.clone(), vec![1; 256]))
        .await;
    assert_eq!(code(result), ErrorCode::InvalidUsername);
    // Nobody was registered.
    let login = c
        .request(&Request::Shared(PlainRequest::Login {
            username: "alice".into(),
        }))
        .await;
    assert_eq!(code(login), ErrorCode::UnknownUser);
    // Then the real one, once.
    c.register(&alice).await.unwrap();
    let again = c.register(&alice).await.unwrap_err();
    assert_eq!(again.code(), Some(ErrorCode::UsernameTaken));
    server.stop().await;
}

#[tokio::test]
async fn bad_device_certificates_log_nobody_in() {
    let server = TestServer::new();
    let (mut alice_c, alice, phone) = user(&server, "alice", 0).await;
    let mallory = identity("mallory", 2);

    // Signed by another identity key.
    let forged = Device::new("alice", |m| mallory.sign(m));
    let mut c = connect(&server).await;
    assert_eq!(
        c.login(&alice, &forged.certificate)
            .await
            .unwrap_err()
            .code(),
        Some(ErrorCode::InvalidDevice)
    );
    not_logged_in(&mut c).await;
    // A certificate of another user.
    let mut c = connect(&server).await;
    c.register(&mallory).await.unwrap();
    let mallorys = device(&mallory);
    assert_eq!(
        c.login(&alice, &mallorys.certificate)
            .await
            .unwrap_err()
            .code(),
        Some(ErrorCode::InvalidDevice)
    );
    not_logged_in(&mut c).await;
    // Not the exact encoding: one byte more.
    let mut longer = phone.certificate.clone();
    longer.push(0);
    let mut c = connect(&server).await;
    assert_eq!(
        c.login(&alice, &longer).await.unwrap_err().code(),
        Some(ErrorCode::InvalidDevice)
    );
    not_logged_in(&mut c).await;
    // The phone's device id with another key.
    let mut imposter = device(&alice);
    imposter.device_id = phone.device_id;
    let cert = e2ee_chat::identity::DeviceCertificate::issue(
        "alice",
        &phone.device_id,
        imposter.signer.public(),
        |m| alice.sign(m),
    );
    let mut c = connect(&server).await;
    assert_eq!(
        c.login(&alice, &cert.encode()).await.unwrap_err().code(),
        Some(ErrorCode::InvalidDevice)
    );
    not_logged_in(&mut c).await;
    // A wrong login signature.
    let mut c = connect(&server).await;
    c.request(&Request::Shared(PlainRequest::Login {
        username: "alice".into(),
    }))
    .await
    .unwrap();
    let result = c
        .request(&Request::Prove {
            signature: ByteBuf::from(vec![0; 256]),
            device: ByteBuf::from(phone.certificate.clone()),
        })
        .await;
    assert_eq!(code(result), ErrorCode::AuthFailed);
    not_logged_in(&mut c).await;
    // Nothing was recorded.
    assert_eq!(devices(&mut alice_c, "alice").await.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn devices_are_limited_per_user() {
    let server = TestServer::with(|s| {
        s.limits.max_devices_per_user = 2;
    });
    let (mut c, alice, _) = user(&server, "alice", 0).await;
    let mut second = connect(&server).await;
    second
        .login(&alice, &device(&alice).certificate)
        .await
        .unwrap();
    let mut third = connect(&server).await;
    let err = third
        .login(&alice, &device(&alice).certificate)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TooManyDevices));
    not_logged_in(&mut third).await;
    assert_eq!(devices(&mut c, "alice").await.len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn a_removed_device_cannot_log_in_again() {
    let server = TestServer::new();
    let (mut phone_c, alice, phone) = user(&server, "alice", 0).await;
    let laptop = device(&alice);
    let mut laptop_c = connect(&server).await;
    laptop_c.login(&alice, &laptop.certificate).await.unwrap();

    // The laptop removes the lost phone.
    let removed = laptop_c
        .request(&Request::RemoveDevice {
            device_id: ByteBuf::from(phone.device_id.to_vec()),
        })
        .await
        .unwrap();
    assert!(matches!(removed, ServerMsg::Shared(PlainMsg::Ok { .. })));
    let listed = devices(&mut laptop_c, "alice").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].device_id.as_slice(), laptop.device_id);
    let mut c = connect(&server).await;
    assert_eq!(
        c.login(&alice, &phone.certificate)
            .await
            .unwrap_err()
            .code(),
        Some(ErrorCode::InvalidDevice)
    );
    not_logged_in(&mut c).await;
    // Removing it again, or a device that never was: invalid_device.
    for id in [phone.device_id, [9; 16]] {
        let result = laptop_c
            .request(&Request::RemoveDevice {
                device_id: ByteBuf::from(id.to_vec()),
            })
            .await;
        assert_eq!(code(result), ErrorCode::InvalidDevice);
    }
    // Bob cannot remove Alice's devices: he names his own, which it is not.
    let (mut bob, _, _) = user(&server, "bob", 1).await;
    let result = bob
        .request(&Request::RemoveDevice {
            device_id: ByteBuf::from(laptop.device_id.to_vec()),
        })
        .await;
    assert_eq!(code(result), ErrorCode::InvalidDevice);
    assert_eq!(devices(&mut phone_c, "alice").await.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn the_vectors_register_frame_registers_alice() {
    // The vectors sign for chat.example.org.
    let server = TestServer::with(|s| {
        s.server.public_hosts = vec!["chat.example.org".into()];
    });
    let v = common::cbor::load("vectors/v3.cbor");
    let frames = common::cbor::get(&v, "frames");
    let mut c = connect(&server).await;
    c.send_raw(common::cbor::bytes(frames, "register"))
        .await
        .unwrap();
    let reply = c.read().await.unwrap();
    assert_eq!(
        reply,
        ServerMsg::Shared(PlainMsg::Registered {
            id: Some(1),
            username: "alice".into()
        })
    );
    server.stop().await;
}

#[tokio::test]
async fn unknown_rooms_and_requests_before_login_are_refused() {
    let server = TestServer::new();
    let (mut c, _, _) = user(&server, "alice", 0).await;
    let result = c
        .request(&Request::GroupState {
            room_id: "r-00".into(),
        })
        .await;
    assert_eq!(code(result), ErrorCode::NoSuchRoom);
    let mut fresh = connect(&server).await;
    let result = fresh
        .request(&Request::GroupState {
            room_id: "r-00".into(),
        })
        .await;
    assert_eq!(code(result), ErrorCode::NotLoggedIn);
    // Before login, everything but register, login, prove and ping is refused.
    let mut fresh = connect(&server).await;
    not_logged_in(&mut fresh).await;
    let pong = fresh
        .request(&Request::Shared(PlainRequest::Ping))
        .await
        .unwrap();
    assert!(matches!(pong, ServerMsg::Shared(PlainMsg::Pong { .. })));
    server.stop().await;
}

/// A database made by a version-2 server that holds accounts is refused at
/// start, saying what to do; an empty one is taken over.
#[tokio::test]
async fn a_version_2_database_is_refused_at_start_and_an_empty_one_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let v2 = |with_user: bool| {
        let path = dir.path().join("chat.db");
        let _ = std::fs::remove_file(&path);
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE users (username TEXT PRIMARY KEY, sign_key BLOB NOT NULL,
                                 enc_key BLOB NOT NULL, created_at INTEGER NOT NULL);
             CREATE TABLE rooms (room_id TEXT PRIMARY KEY, name TEXT NOT NULL,
                                 name_folded TEXT NOT NULL UNIQUE, owner TEXT NOT NULL,
                                 password_hash TEXT, hidden INTEGER NOT NULL,
                                 created_at INTEGER NOT NULL, last_seq INTEGER NOT NULL DEFAULT 0);
             PRAGMA user_version = 2;",
        )
        .unwrap();
        if with_user {
            c.execute(
                "INSERT INTO users VALUES ('alice', x'3082', x'3082', 1)",
                [],
            )
            .unwrap();
        }
    };
    v2(true);
    let err = e2ee_chat::server::start(common::settings(dir.path()), false)
        .err()
        .expect("a version-2 database with accounts is refused")
        .to_string();
    assert!(err.contains("schema version 2"), "{err}");
    assert!(err.contains("protocol-v2"), "{err}");
    assert!(err.contains("new database"), "{err}");
    v2(false);
    let mut server = common::TestServer {
        server: Some(common::start(common::settings(dir.path()))),
        dir,
    };
    user(&server, "bob", 1).await;
    server.restart().await;
    let mut c = connect(&server).await;
    c.login(
        &identity("bob", 1),
        &device(&identity("bob", 1)).certificate,
    )
    .await
    .expect("bob is still there");
    server.stop().await;
}

/// A look-alike server relays the real challenge: the victim signed the
/// host she dialed, which is not this server, so the real server refuses.
#[tokio::test]
async fn a_relayed_login_proof_is_refused() {
    let server = TestServer::new();
    let (mut c, alice, device) = user(&server, "alice", 0).await;
    drop(c);
    let mut relayed = connect(&server).await;
    relayed.set_host("chat.example.org.evil");
    assert_eq!(
        code(relayed.login(&alice, &device.certificate).await),
        ErrorCode::AuthFailed
    );
    c = connect(&server).await;
    c.login(&alice, &device.certificate).await.unwrap();
    server.stop().await;

    // With server.public_hosts set, only those names count, whatever the
    // Host header says.
    let server = TestServer::with(|s| s.server.public_hosts = vec!["chat.example.org".into()]);
    let mut c = connect(&server).await;
    // (Registering signs the host too.)
    assert_eq!(
        code(
            c.register(&alice)
                .await
                .map(|_| ServerMsg::Shared(PlainMsg::Ok { id: None }))
        ),
        ErrorCode::AuthFailed
    );
    c.set_host("chat.example.org");
    c.register(&alice).await.unwrap();
    let mut direct = connect(&server).await;
    assert_eq!(
        code(direct.login(&alice, &device.certificate).await),
        ErrorCode::AuthFailed
    );
    direct.set_host("chat.example.org");
    direct.login(&alice, &device.certificate).await.unwrap();
    server.stop().await;
}
