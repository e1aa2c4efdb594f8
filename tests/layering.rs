//! The actor modules form no cycle: `session` may use `registry` and
//! `room`, `registry` may use `room`, and `room` uses neither (it reports
//! to the Registry through a `Recipient<RoomChanged>` it declares itself).
//! What they share (`Push`, `SessionHandle`, `SessionId`) lives in
//! `handle`, which uses none of them. Below them, the store and the one
//! message type, the identity layer and the MLS Delivery Service core
//! (`mls`) use no actor at all. A new import against that order fails
//! here (ARCHITECTURE.md, invariant I1).

use std::path::Path;

/// Every `.rs` file under `dir` with its text.
fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if d.is_file() {
            out.push((
                d.display().to_string(),
                std::fs::read_to_string(&d).unwrap(),
            ));
            continue;
        }
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() || p.extension().is_some_and(|e| e == "rs") {
                stack.push(p);
            }
        }
    }
    out
}

#[test]
fn session_registry_room_import_one_way_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    const ACTORS: &[&str] = &[
        "crate::session",
        "crate::registry",
        "crate::room",
        "crate::cluster",
    ];
    let rules: [(&str, &[&str]); 8] = [
        (
            "handle.rs",
            &["crate::session", "crate::registry", "crate::room"],
        ),
        ("room", &["crate::session", "crate::registry"]),
        ("registry", &["crate::session"]),
        ("room.rs", &["crate::session", "crate::registry"]),
        ("store", ACTORS),
        ("message.rs", ACTORS),
        ("identity.rs", ACTORS),
        ("mls", ACTORS),
    ];
    let mut broken = Vec::new();
    for (module, forbidden) in rules {
        let path = src.join(module);
        if !path.exists() {
            continue;
        }
        for (file, text) in sources(&path) {
            for word in forbidden {
                if text.contains(word) {
                    broken.push(format!("{file} uses {word}"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "module cycle: {broken:#?}");
}
