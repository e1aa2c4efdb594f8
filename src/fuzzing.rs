//! The bodies of the fuzz targets (`fuzz/`), kept in the library so the
//! regression corpus runs on stable in `cargo test` (tests/fuzz_regressions.rs)
//! through exactly the same code the fuzzer runs.

use crate::crypto::PublicKeys;
use crate::protocol::{decode_request, Request, ServerMsg};
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
/// actor: field validation, key parsing for `register`, lengths for `send`.
pub fn dispatch(data: &[u8]) {
    let Ok((_, req)) = decode_request(data) else {
        return;
    };
    let _ = validate::request(&req);
    match &req {
        Request::Register {
            sign_key, enc_key, ..
        } => {
            let _ = PublicKeys::parse(sign_key, enc_key);
        }
        Request::Send(body) => {
            let _ = body.signature_input();
        }
        _ => {}
    }
}
