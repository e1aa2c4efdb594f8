//! The request path up to the actors: decode, then the session's stateless
//! validation and key parsing, on arbitrary bytes. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    e2ee_chat::fuzzing::dispatch(data);
});
