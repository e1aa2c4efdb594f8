//! The bodies of the fuzz targets (`fuzz/`), kept in the library so the
//! regression corpus runs on stable in `cargo test` (tests/fuzz_regressions.rs)
//! through exactly the same code the fuzzer runs.

use crate::identity::{DeviceCertificate, IdentityKey};
use crate::protocol::decode_request;
use crate::protocol::{Request, ServerMsg};
use crate::validate;

/// Decodes a frame as the server does; what decodes must re-encode to a
/// frame that decodes to the same request. Also feeds the client's decoder.
pub fn decode_frame(data: &[u8]) {
    if let Ok((id, req)) = decode_request(data) {
        let again =
            decode_request(&req.encode(id)).expect("a decoded request re-encodes to a valid frame");
        assert_eq!(again.0, id);
        assert_eq!(format!("{:?}", again.1), format!("{req:?}"));
    }
    let _ = ServerMsg::decode(data);
}

/// Decode, then everything the session checks before a request reaches an
/// actor: field validation, and parsing the identity key of `register` and
/// the device certificate of `prove`.
pub fn dispatch(data: &[u8]) {
    let Ok((_, req)) = decode_request(data) else {
        return;
    };
    match &req {
        Request::Shared(shared) => {
            let _ = validate::request(shared);
        }
        Request::Register {
            username,
            identity_key,
            ..
        } => {
            let _ = validate::username(username);
            let _ = IdentityKey::parse(identity_key);
        }
        Request::Prove { device, .. } => {
            let _ = DeviceCertificate::decode(device);
        }
        Request::CreateRoom { name, password, .. } => {
            let _ = validate::new_room(name, password.as_deref());
        }
        _ => {}
    }
}
