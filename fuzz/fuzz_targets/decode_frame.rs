//! The frame decoder on arbitrary bytes: it must never panic, and whatever it
//! accepts must survive a round trip through the encoder unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    e2ee_chat::fuzzing::decode_frame(data);
});
