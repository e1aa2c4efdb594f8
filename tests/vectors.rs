//! The independent test vectors (tests/vectors/v2.cbor, a copy of
//! ../shared/vectors/v2.cbor made with Python's `cryptography` and `cbor2`):
//! our crypto and codec must agree with them byte for byte.

mod common;

use ciborium::Value;
use common::cbor::{self, bytes, get, text};
use e2ee_chat::crypto::{self, KeyPair, PublicKeys};
use e2ee_chat::protocol::{decode_request, ErrorCode, MessageData, Request};
use serde_bytes::ByteBuf;

fn vectors() -> Value {
    cbor::load("vectors/v2.cbor")
}

fn user(v: &Value, i: usize) -> &Value {
    &get(v, "users").as_array().unwrap()[i]
}

fn keypair(u: &Value) -> KeyPair {
    KeyPair::from_pkcs8_der(
        &bytes(u, "sign_private_pkcs8"),
        &bytes(u, "enc_private_pkcs8"),
    )
    .unwrap()
}

#[test]
fn public_keys_parse_and_fingerprints_match() {
    let v = vectors();
    for i in 0..2 {
        let u = user(&v, i);
        let keys = PublicKeys::parse(&bytes(u, "sign_key"), &bytes(u, "enc_key")).unwrap();
        let fp = keys.fingerprint();
        assert_eq!(hex::encode(fp), text(u, "fingerprint"));
        assert_eq!(
            crypto::fingerprint_display(&fp),
            text(u, "fingerprint_display")
        );
        // The private keys yield the same public DER.
        let kp = keypair(u);
        assert_eq!(kp.sign_der, bytes(u, "sign_key"));
        assert_eq!(kp.enc_der, bytes(u, "enc_key"));
    }
}

#[test]
fn login_signature_input_and_signature() {
    let v = vectors();
    let login = get(&v, "login");
    let username = text(login, "username");
    let host = text(login, "host");
    let input = crypto::login_signature_input(&host, &username, &bytes(login, "nonce"));
    assert_eq!(input, bytes(login, "signature_input"));
    // The host is what a client dialing wss://chat.example.org/ws signs.
    assert_eq!(
        crypto::host_of_url("wss://Chat.Example.org:443/ws").as_deref(),
        Some(host.as_str())
    );
    let alice = user(&v, 0);
    let keys = PublicKeys::parse(&bytes(alice, "sign_key"), &bytes(alice, "enc_key")).unwrap();
    assert!(keys.verify(&input, &bytes(login, "signature")));
    // Any change breaks it.
    let mut tampered = input.clone();
    tampered[0] ^= 1;
    assert!(!keys.verify(&tampered, &bytes(login, "signature")));
    // Our own signature verifies with the same key.
    let ours = keypair(alice).sign(&input);
    assert!(keys.verify(&input, &ours));
    // A proof for another host (a relaying look-alike) does not verify.
    let relayed =
        crypto::login_signature_input("chat.example.org.evil", &username, &bytes(login, "nonce"));
    assert!(!keys.verify(&relayed, &bytes(login, "signature")));
}

#[test]
fn message_vector_decrypts_for_both_recipients() {
    let v = vectors();
    let m = get(&v, "message");
    let room_id = text(m, "room_id");
    let msg_id = bytes(m, "msg_id");
    let nonce = bytes(m, "nonce");
    let ciphertext = bytes(m, "ciphertext");
    let commitment = bytes(m, "key_commitment");
    assert_eq!(crypto::message_aad(&room_id, &msg_id), bytes(m, "aad"));
    assert_eq!(
        crypto::key_commitment(&bytes(m, "aes_key")).as_slice(),
        commitment.as_slice()
    );
    assert_eq!(
        crypto::message_signature_input(&room_id, &msg_id, &nonce, &commitment, &ciphertext),
        bytes(m, "signature_input")
    );
    // Our plaintext encoding is the vector's, byte for byte.
    let sent_at = get(m, "sent_at")
        .as_integer()
        .map(u64::try_from)
        .unwrap()
        .unwrap();
    let plaintext = e2ee_chat::client::Plaintext {
        text: text(m, "text"),
        sent_at,
    };
    assert_eq!(plaintext.encode(), bytes(m, "plaintext"));
    // AES-GCM with the given key reproduces the ciphertext exactly (deterministic).
    assert_eq!(
        crypto::seal(
            &bytes(m, "aes_key"),
            &nonce,
            &bytes(m, "aad"),
            &bytes(m, "plaintext")
        ),
        ciphertext
    );
    let alice = user(&v, 0);
    let sender = PublicKeys::parse(&bytes(alice, "sign_key"), &bytes(alice, "enc_key")).unwrap();
    for (i, name) in [(0, "alice"), (1, "bob")] {
        let me = keypair(user(&v, i));
        let key = bytes(get(m, "keys"), name);
        assert_eq!(me.unwrap_key(&key).unwrap(), bytes(m, "aes_key"));
        let data = MessageData {
            room_id: room_id.clone(),
            seq: 1,
            ts: 0,
            msg_id: ByteBuf::from(msg_id.clone()),
            sender: "alice".into(),
            nonce: ByteBuf::from(nonce.clone()),
            key_commitment: ByteBuf::from(commitment.clone()),
            ciphertext: ByteBuf::from(ciphertext.clone()),
            key: ByteBuf::from(key),
            signature: ByteBuf::from(bytes(m, "signature")),
        };
        let opened = e2ee_chat::client::open_message(&me, &sender, &data).unwrap();
        assert_eq!(opened, plaintext);
        // A different commitment breaks the signature; a matching signature
        // over another commitment fails the commitment check.
        let mut wrong = data.clone();
        wrong.key_commitment[0] ^= 1;
        assert!(e2ee_chat::client::open_message(&me, &sender, &wrong).is_err());
    }
}

#[test]
fn good_frames_decode() {
    let v = vectors();
    let frames = get(&v, "frames");
    let (id, req) = decode_request(&bytes(frames, "register")).unwrap();
    assert_eq!(id, Some(1));
    assert!(matches!(req, Request::Register { username, .. } if username == "alice"));
    let (id, req) = decode_request(&bytes(frames, "login_without_id")).unwrap();
    assert_eq!(id, None);
    assert!(matches!(req, Request::Login { username } if username == "alice"));
    let (_, req) = decode_request(&bytes(frames, "send_keys_sorted_with_unknown_field")).unwrap();
    let Request::Send(body) = req else {
        panic!("not a send")
    };
    let m = get(&v, "message");
    assert_eq!(body.room_id, text(m, "room_id"));
    assert_eq!(
        body.ciphertext.as_slice(),
        bytes(m, "ciphertext").as_slice()
    );
    assert_eq!(
        body.key_commitment.as_slice(),
        bytes(m, "key_commitment").as_slice()
    );
    assert_eq!(body.keys.len(), 2);
    assert!(body.keys.contains_key("alice") && body.keys.contains_key("bob"));
}

#[test]
fn bad_frames_are_malformed() {
    let v = vectors();
    let frames = get(&v, "frames");
    for name in [
        "bytes_as_array_is_malformed",
        "not_a_map_is_malformed",
        "truncated_is_malformed",
    ] {
        let err = decode_request(&bytes(frames, name)).unwrap_err();
        assert_eq!(err.failure.code, ErrorCode::Malformed, "{name}");
    }
    // The array-bytes frame still has a readable id to echo.
    let err = decode_request(&bytes(frames, "bytes_as_array_is_malformed")).unwrap_err();
    assert_eq!(err.id, Some(3));
}
