//! The fuzz targets' bodies on stable: every seed in fuzz/seeds/ (and any
//! input the fuzzer once crashed on, kept in fuzz/regressions/) runs through
//! the frame decoder and the request path, exactly as `cargo fuzz` runs them.

use std::path::Path;

fn inputs(dir: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn seeds_and_past_crashes_run_clean() {
    let mut all = inputs("fuzz/seeds");
    assert!(all.len() >= 10, "the seed corpus is missing");
    all.extend(inputs("fuzz/regressions"));
    for (name, data) in &all {
        let run = std::panic::catch_unwind(|| {
            e2ee_chat::fuzzing::decode_frame(data);
            e2ee_chat::fuzzing::dispatch(data);
        });
        assert!(run.is_ok(), "fuzz input {name} panics");
    }
}

#[test]
fn deeply_nested_frames_do_not_overflow_the_stack() {
    // 100k nested arrays: the decoder must refuse, not recurse without end.
    let mut frame = vec![0x81u8; 100_000];
    frame.push(0);
    e2ee_chat::fuzzing::decode_frame(&frame);
    let mut frame = [0xa1u8, 0x61, b'a'].repeat(50_000);
    frame.push(0);
    e2ee_chat::fuzzing::decode_frame(&frame);
}

/// The seeds of the requests that carry MLS objects or devices are valid
/// frames (so the fuzzer starts from inside the decoder, not at its door).
#[test]
fn the_request_seeds_decode() {
    let seeds = inputs("fuzz/seeds");
    for name in [
        "register",
        "prove",
        "create_room",
        "send_with_unknown_field",
        "commit",
        "group_state",
        "publish_group_info",
        "list_devices",
        "remove_device",
    ] {
        let (_, data) = seeds
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no seed {name}"));
        e2ee_chat::protocol::decode_request(data)
            .unwrap_or_else(|e| panic!("seed {name}: {:?}", e.failure));
    }
}
