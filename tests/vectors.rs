//! The protocol's test vectors (tests/vectors/v3.cbor, a copy of
//! ../shared/vectors/v3.cbor made with Python's `cryptography` and `cbor2`):
//! the identity layer (`e2ee_chat::identity`) must agree with them byte for
//! byte: fingerprints, the register proof, the login input, the device
//! certificate's input and exact bytes, the certificates that must be
//! refused, and a room id from its group id. (MLS objects are randomized;
//! the clients prove interoperation by talking to each other.)

mod common;

use ciborium::Value;
use common::cbor::{self, bytes, get, text};
use e2ee_chat::crypto::fingerprint_display;
use e2ee_chat::identity::{
    device_signature_input, login_signature_input, register_proof_input, room_id_of_group_id,
    CertError, DeviceCertificate, IdentityKey,
};

fn vectors() -> Value {
    cbor::load("vectors/v3.cbor")
}

fn identity(v: &Value, user: &str) -> IdentityKey {
    IdentityKey::parse(&bytes(get(get(v, "users"), user), "identity_key")).unwrap()
}

#[test]
fn identity_keys_parse_and_fingerprints_match() {
    let v = vectors();
    assert_eq!(get(&v, "version").as_integer(), Some(3.into()));
    for name in ["alice", "bob"] {
        let u = get(get(&v, "users"), name);
        let fp = identity(&v, name).fingerprint();
        assert_eq!(hex::encode(fp), text(u, "fingerprint"));
        assert_eq!(fingerprint_display(&fp), text(u, "fingerprint_display"));
    }
}

#[test]
fn register_proof_and_login_signature() {
    let v = vectors();
    let (alice, bob) = (identity(&v, "alice"), identity(&v, "bob"));
    let r = get(&v, "register");
    let input = register_proof_input(&text(r, "host"), &text(r, "username"));
    assert_eq!(input, bytes(r, "proof_input"));
    assert!(alice.verify(&input, &bytes(r, "proof")));
    assert!(!bob.verify(&input, &bytes(r, "proof")), "another key");
    let other_host = register_proof_input("evil.example", "alice");
    assert!(
        !alice.verify(&other_host, &bytes(r, "proof")),
        "another host"
    );

    let l = get(&v, "login");
    let input = login_signature_input(&text(l, "host"), &text(l, "username"), &bytes(l, "nonce"));
    assert_eq!(input, bytes(l, "signature_input"));
    assert!(alice.verify(&input, &bytes(l, "signature")));
    assert!(
        !alice.verify(&bytes(r, "proof_input"), &bytes(l, "signature")),
        "a login signature is not a register proof"
    );
}

#[test]
fn device_certificate_bytes_and_check() {
    let v = vectors();
    let d = get(&v, "device");
    let alice = identity(&v, "alice");
    let (user, device, mls_key) = (
        text(d, "username"),
        bytes(d, "device_id"),
        bytes(d, "mls_key"),
    );
    // The device's Ed25519 key from its seed, as a client makes it.
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&bytes(d, "mls_private_seed"))
        .unwrap();
    use ring::signature::KeyPair;
    assert_eq!(pair.public_key().as_ref(), mls_key.as_slice());

    let input = device_signature_input(&user, &device, &mls_key);
    assert_eq!(input, bytes(d, "signature_input"));
    let cert = DeviceCertificate {
        user: user.clone(),
        device: device.clone(),
        mls_key: mls_key.clone(),
        sig: bytes(d, "signature"),
    };
    assert_eq!(cert.encode(), bytes(d, "certificate"), "the exact bytes");
    assert_eq!(
        DeviceCertificate::check(&bytes(d, "certificate"), "alice", &alice),
        Ok(cert.clone())
    );
    assert_eq!(
        DeviceCertificate::check(&bytes(d, "certificate"), "bob", &alice),
        Err(CertError::OtherUser)
    );
    assert_eq!(
        DeviceCertificate::check(&bytes(d, "certificate"), "alice", &identity(&v, "bob")),
        Err(CertError::Signature)
    );
}

#[test]
fn a_certificate_issued_here_checks() {
    let v = vectors();
    let d = get(&v, "device");
    let private = bytes(get(get(&v, "users"), "alice"), "identity_private_pkcs8");
    // KeyPair holds two RSA keys; the identity key serves as both here.
    let keys = e2ee_chat::crypto::KeyPair::from_pkcs8_der(&private, &private).unwrap();
    let cert =
        DeviceCertificate::issue("alice", &bytes(d, "device_id"), &bytes(d, "mls_key"), |m| {
            keys.sign(m)
        });
    let encoded = cert.encode();
    assert_eq!(
        DeviceCertificate::check(&encoded, "alice", &identity(&v, "alice")),
        Ok(cert)
    );
    // RSA-PSS is randomized: same fields, other signature bytes.
    assert_ne!(encoded, bytes(d, "certificate"));
}

#[test]
fn refused_certificates_are_refused() {
    let v = vectors();
    let alice = identity(&v, "alice");
    let refused = get(get(&v, "device"), "refused").as_map().unwrap();
    assert!(refused.len() >= 6);
    for (name, cert) in refused {
        let name = name.as_text().unwrap();
        let got = DeviceCertificate::check(cert.as_bytes().unwrap(), "alice", &alice);
        let want = match name {
            "mls_key_swapped" | "signed_by_bob" => CertError::Signature,
            "user_renamed" => CertError::OtherUser,
            "keys_out_of_order" | "extra_key" | "trailing_byte" => CertError::Encoding,
            other => panic!("a refused certificate this test does not know: {other}"),
        };
        assert_eq!(got, Err(want), "{name}");
    }
}

#[test]
fn a_room_id_names_its_group() {
    let v = vectors();
    let r = get(&v, "room_id_of_group_id");
    assert_eq!(
        room_id_of_group_id(&bytes(r, "group_id")),
        text(r, "room_id")
    );
}

#[test]
fn the_application_plaintext_encodes_and_decodes_as_the_vector() {
    use e2ee_chat::client::chat::{decode_plaintext, encode_plaintext};
    let v = vectors();
    let p = get(&v, "plaintext");
    let sent_at: u64 = get(p, "sent_at").as_integer().unwrap().try_into().unwrap();
    let encoded = bytes(p, "bytes");
    assert_eq!(encode_plaintext(&text(p, "text"), sent_at), encoded);
    assert_eq!(decode_plaintext(&encoded), Some((text(p, "text"), sent_at)));
    let mut trailing = encoded.clone();
    trailing.push(0);
    assert_eq!(decode_plaintext(&trailing), None, "nothing after the map");
}

/// A frame of the vectors' `frames`, as the bytes a client sends.
fn frame(v: &Value, name: &str) -> Vec<u8> {
    match get(get(v, "frames"), name) {
        Value::Bytes(b) => b.clone(),
        map => {
            let mut out = Vec::new();
            ciborium::into_writer(map, &mut out).unwrap();
            out
        }
    }
}

#[test]
fn register_and_prove_frames_decode_as_version_3() {
    use e2ee_chat::protocol::{decode_request, Request};
    let v = vectors();
    let (id, register) = decode_request(&frame(&v, "register")).unwrap();
    assert_eq!(id, Some(1));
    let Request::Register {
        username,
        identity_key,
        proof,
    } = register
    else {
        panic!("not a register: {register:?}");
    };
    assert_eq!(username, "alice");
    assert_eq!(identity_key.as_slice(), identity(&v, "alice").der());
    assert_eq!(proof.into_vec(), bytes(get(&v, "register"), "proof"));

    let (id, prove) = decode_request(&frame(&v, "prove")).unwrap();
    assert_eq!(id, Some(2));
    let Request::Prove { signature, device } = prove else {
        panic!("not a prove: {prove:?}");
    };
    assert_eq!(signature.into_vec(), bytes(get(&v, "login"), "signature"));
    let cert = DeviceCertificate::check(&device, "alice", &identity(&v, "alice")).unwrap();
    assert_eq!(cert.encode(), bytes(get(&v, "device"), "certificate"));
}
