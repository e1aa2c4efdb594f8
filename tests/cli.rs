//! The terminal client binary against a real server: the command flow, trust
//! on first use, key files and passphrases, and the interactive mode in a
//! real terminal under tmux.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::TestServer;

const CLI: &str = env!("CARGO_BIN_EXE_e2ee-chat");

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn cli(server: &str, profile: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(CLI);
    cmd.arg("--profile")
        .arg(profile)
        .arg("--server")
        .arg(server)
        .args(args)
        .env_remove("E2EE_CHAT_PASSPHRASE")
        .env_remove("E2EE_CHAT_SERVER")
        .env_remove("E2EE_CHAT_PROFILE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().unwrap();
    Run {
        ok: status.success(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Runs the CLI off the async runtime (the server runs in this process).
async fn run(server: &str, profile: &Path, args: &[&str]) -> Run {
    run_env(server, profile, args, &[]).await
}

async fn run_env(server: &str, profile: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let (server, profile) = (server.to_owned(), profile.to_path_buf());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        cli(&server, &profile, &args, &env)
    })
    .await
    .unwrap()
}

#[track_caller]
fn ok(r: &Run) -> &str {
    assert!(r.ok, "failed:\nstdout: {}\nstderr: {}", r.stdout, r.stderr);
    &r.stdout
}

async fn identity(url: &str, dir: &Path, user: &str) {
    ok(&run(url, dir, &["keygen", "--user", user]).await);
    ok(&run(url, dir, &["register"]).await);
}

/// Profiles for alice and bob under `home`, registered at `url`; with a
/// room, alice creates it and bob joins.
async fn alice_and_bob(
    url: &str,
    home: &Path,
    room: Option<&str>,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let (a, b) = (home.join("alice"), home.join("bob"));
    identity(url, &a, "alice").await;
    identity(url, &b, "bob").await;
    if let Some(room) = room {
        ok(&run(url, &a, &["create", room]).await);
        ok(&run(url, &b, &["join", room]).await);
    }
    (a, b)
}

#[tokio::test]
async fn owner_subcommands() {
    let t = TestServer::new();
    let url = t.url();
    let home = tempfile::tempdir().unwrap();
    let (a, b) = alice_and_bob(&url, home.path(), Some("Club")).await;
    let not_owner = run(&url, &b, &["kick", "Club", "alice"]).await;
    assert!(
        !not_owner.ok && not_owner.stderr.contains("NotOwner"),
        "{}",
        not_owner.stderr
    );
    let unknown = run(&url, &a, &["ban", "Club", "nobody"]).await;
    assert!(
        !unknown.ok && unknown.stderr.contains("UnknownUser"),
        "{}",
        unknown.stderr
    );
    assert!(ok(&run(&url, &a, &["kick", "Club", "bob"]).await).contains("kicked bob"));
    ok(&run(&url, &b, &["join", "Club"]).await);
    ok(&run(&url, &a, &["ban", "Club", "bob"]).await);
    let banned = run(&url, &b, &["join", "Club"]).await;
    assert!(
        !banned.ok && banned.stderr.contains("Banned"),
        "{}",
        banned.stderr
    );
    ok(&run(&url, &a, &["unban", "Club", "bob"]).await);
    ok(&run(&url, &a, &["set-password", "Club", "s3cret"]).await);
    assert!(!run(&url, &b, &["join", "Club"]).await.ok);
    ok(&run(&url, &b, &["join", "Club", "--password", "s3cret"]).await);
    ok(&run(&url, &a, &["set-password", "Club"]).await);
    assert!(
        ok(&run(&url, &a, &["rename", "Club", "Salon"]).await).contains("renamed Club to Salon")
    );
    assert!(ok(&run(&url, &b, &["rooms"]).await).contains("Salon"));
    assert!(ok(&run(&url, &a, &["delete", "Salon"]).await).contains("deleted Salon"));
    assert!(!ok(&run(&url, &b, &["rooms"]).await).contains("Salon"));
    t.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn key_files_are_private_and_a_passphrase_is_required() {
    use std::os::unix::fs::PermissionsExt;
    let t = TestServer::new();
    let url = t.url();
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("carol");
    let pw = [("E2EE_CHAT_PASSPHRASE", "correct horse")];
    ok(&run_env(&url, &dir, &["keygen", "--user", "carol", "--encrypt"], &pw).await);
    for f in ["sign_key.pem", "enc_key.pem", "profile.toml"] {
        let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let pem = std::fs::read_to_string(dir.join("sign_key.pem")).unwrap();
    assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
    // Without the passphrase (and no terminal to ask on): refused.
    let r = run(&url, &dir, &["register"]).await;
    assert!(
        !r.ok && r.stderr.contains("passphrase-protected"),
        "{}",
        r.stderr
    );
    // With a wrong one: refused.
    let r = run_env(
        &url,
        &dir,
        &["register"],
        &[("E2EE_CHAT_PASSPHRASE", "wrong")],
    )
    .await;
    assert!(
        !r.ok && r.stderr.contains("wrong passphrase"),
        "{}",
        r.stderr
    );
    // With the right one: works.
    ok(&run_env(&url, &dir, &["register"], &pw).await);
    ok(&run_env(&url, &dir, &["rooms"], &pw).await);
    t.stop().await;
}

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().expect("tmux runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `command` in a new detached tmux session of `size` (columns, rows).
fn start_tmux(session: &str, size: (u16, u16), command: &str) {
    let (x, y) = (size.0.to_string(), size.1.to_string());
    tmux(&[
        "new-session",
        "-d",
        "-s",
        session,
        "-x",
        &x,
        "-y",
        &y,
        command,
    ]);
}

async fn screen_shows(session: &str, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let screen = tmux(&["capture-pane", "-t", session, "-p"]);
        if screen.contains(text) || Instant::now() > deadline {
            return screen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The profile's signing key is the identity key and the device lives in
/// the profile's `device.db`. Create, join by external commit, talk both ways with the
/// other's device announced first, history from the device's own store,
/// devices, and a kick whose removal commit the next send makes.
#[tokio::test]
async fn create_join_talk_history_and_a_kick() {
    let t = TestServer::new();
    let url = t.url();
    let home = tempfile::tempdir().unwrap();
    let (a, b) = (home.path().join("alice"), home.path().join("bob"));
    for (dir, user) in [(&a, "alice"), (&b, "bob")] {
        ok(&run(&url, dir, &["keygen", "--user", user]).await);
        let r = run(&url, dir, &["register"]).await;
        assert!(
            ok(&r).contains(&format!("registered {user}")),
            "{}",
            r.stdout
        );
    }
    let out = ok(&run(&url, &a, &["create", "Lobby"]).await).to_owned();
    assert!(out.contains("created Lobby"), "{out}");
    let joined = ok(&run(&url, &b, &["join", "lobby"]).await).to_owned();
    assert!(joined.contains("in its group"), "{joined}");

    let first = run(&url, &a, &["send", "Lobby", "hello", "bob"]).await;
    ok(&first);
    assert!(
        first.stderr.contains("new device in this room: bob"),
        "{}",
        first.stderr
    );
    let again = run(&url, &a, &["send", "Lobby", "again"]).await;
    assert!(!ok(&again).is_empty() && !again.stderr.contains("new device"));
    ok(&run(&url, &b, &["send", "Lobby", "hi alice"]).await);
    for dir in [&a, &b] {
        let h = ok(&run(&url, dir, &["history", "Lobby"]).await).to_owned();
        assert!(h.contains("alice: hello bob"), "{h}");
        assert!(h.contains("alice: again"), "{h}");
        assert!(h.contains("bob: hi alice"), "{h}");
    }
    let devices = ok(&run(&url, &a, &["devices"]).await).to_owned();
    assert_eq!(devices.lines().count(), 1, "{devices}");
    assert!(devices.contains("(this device)"), "{devices}");
    let rooms = ok(&run(&url, &b, &["rooms"]).await).to_owned();
    assert!(rooms.contains("Lobby"), "{rooms}");

    // A kick leaves Bob's leaf behind: Alice's next send commits its removal.
    ok(&run(&url, &a, &["kick", "Lobby", "bob"]).await);
    ok(&run(&url, &a, &["send", "Lobby", "bob", "is", "out"]).await);
    let h = ok(&run(&url, &a, &["history", "Lobby"]).await).to_owned();
    assert!(h.contains("alice: bob is out"), "{h}");
    let refused = run(&url, &b, &["send", "Lobby", "still", "here?"]).await;
    assert!(!refused.ok, "{}", refused.stdout);
    t.stop().await;
}

/// The epoch of `room` as `rooms` lists it to `dir`'s user.
async fn listed_epoch(url: &str, dir: &Path, room: &str) -> u64 {
    let rooms = ok(&run(url, dir, &["rooms"]).await).to_owned();
    let line = rooms
        .lines()
        .find(|l| l.starts_with(room))
        .unwrap_or_else(|| panic!("{room} not listed: {rooms}"));
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[tokio::test]
async fn chat_screen_talks_announces_and_removes_who_left() {
    if Command::new("tmux").arg("-V").output().is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "tmux is needed for this test (apt-get install tmux)"
        );
        eprintln!("SKIP chat screen: tmux is not installed");
        return;
    }
    let t = TestServer::new();
    let url = t.url();
    let home = tempfile::tempdir().unwrap();
    let [a, b, c] = ["alice", "bob", "carol"].map(|u| home.path().join(u));
    for (dir, user) in [(&a, "alice"), (&b, "bob"), (&c, "carol")] {
        ok(&run(&url, dir, &["keygen", "--user", user]).await);
        ok(&run(&url, dir, &["register"]).await);
    }
    ok(&run(&url, &a, &["create", "Screen"]).await);
    ok(&run(&url, &b, &["join", "Screen"]).await);
    ok(&run(&url, &b, &["send", "Screen", "before the screen"]).await);

    let session = format!("e2ee-test3-{}", std::process::id());
    let command = format!("{CLI} --profile {} --server {url} chat", a.display());
    start_tmux(&session, (200, 40), &command);
    let screen = screen_shows(&session, "before the screen").await;
    assert!(screen.contains("bob ✓ before the screen"), "{screen}");
    assert!(screen.contains("new device in this room: bob"), "{screen}");

    // Live both ways.
    ok(&run(&url, &b, &["send", "Screen", "hello screen"]).await);
    let screen = screen_shows(&session, "hello screen").await;
    assert!(screen.contains("bob ✓ hello screen"), "{screen}");
    tmux(&["send-keys", "-t", &session, "typed in v3", "Enter"]);
    let screen = screen_shows(&session, "alice ✓ typed in v3").await;
    assert!(screen.contains("alice ✓ typed in v3"), "{screen}");
    let h = ok(&run(&url, &b, &["history", "Screen"]).await).to_owned();
    assert!(h.contains("alice: typed in v3"), "{h}");

    // A newcomer is shown with the fingerprint, and their device as it enters.
    ok(&run(&url, &c, &["join", "Screen"]).await);
    let screen = screen_shows(&session, "new device in this room: carol").await;
    assert!(screen.contains("carol joined (fingerprint"), "{screen}");
    assert!(
        screen.contains("new device in this room: carol"),
        "{screen}"
    );

    // Bob leaves: the screen's device commits the removal of his leaf.
    let before = listed_epoch(&url, &c, "Screen").await;
    ok(&run(&url, &b, &["leave", "Screen"]).await);
    let screen = screen_shows(&session, "bob left").await;
    assert!(screen.contains("bob left (left)"), "{screen}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while listed_epoch(&url, &c, "Screen").await == before {
        assert!(Instant::now() < deadline, "no removal commit");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tmux(&["send-keys", "-t", &session, "/members", "Enter"]);
    let screen = screen_shows(&session, "device in the group").await;
    assert!(screen.contains("(1 device in the group)"), "{screen}");
    ok(&run(&url, &c, &["send", "Screen", "after bob"]).await);
    let screen = screen_shows(&session, "after bob").await;
    assert!(screen.contains("carol ✓ after bob"), "{screen}");
    tmux(&["send-keys", "-t", &session, "/quit", "Enter"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    tmux(&["kill-session", "-t", &session]);
    t.stop().await;
}

#[tokio::test]
async fn members_trust_and_a_second_device_from_an_exported_profile() {
    let t = TestServer::new();
    let url = t.url();
    let home = tempfile::tempdir().unwrap();
    let pw = [("E2EE_CHAT_PASSPHRASE", "a long passphrase")];
    let (a, b) = (home.path().join("alice"), home.path().join("bob"));
    for (dir, user) in [(&a, "alice"), (&b, "bob")] {
        ok(&run_env(&url, dir, &["keygen", "--user", user, "--encrypt"], &pw).await);
        ok(&run_env(&url, dir, &["register"], &pw).await);
    }
    ok(&run_env(&url, &a, &["create", "Lobby"], &pw).await);
    ok(&run_env(&url, &b, &["join", "Lobby"], &pw).await);
    ok(&run_env(&url, &a, &["send", "Lobby", "hello"], &pw).await);
    let members = ok(&run_env(&url, &a, &["members", "Lobby"], &pw).await).to_owned();
    let bob_line = members.lines().find(|l| l.starts_with("bob")).unwrap();
    assert!(
        bob_line.contains("1 device(s) in the group  pinned"),
        "{members}"
    );
    let bob_fp = ok(&run_env(&url, &b, &["fingerprint"], &pw).await).to_owned();
    let bob_fp = bob_fp.trim().strip_prefix("bob: ").unwrap().to_owned();
    let seen = ok(&run_env(&url, &a, &["fingerprint", "bob"], &pw).await).to_owned();
    assert_eq!(seen.trim(), format!("bob: {bob_fp}"));
    assert!(bob_line.contains(&bob_fp), "{bob_line} / {bob_fp}");

    // What a hostile server would make Alice see: another key for Bob than
    // the one she pinned. Sends are refused, `members` says so, and `trust`
    // with the fingerprint Bob read out (the served key's) lifts it.
    {
        use e2ee_chat::client::device_store::DeviceStore;
        let (store, _) = DeviceStore::open(&a.join("device.db")).unwrap();
        let other = common::phone::identity("mallory", 5);
        store.repin("bob", &other.der).unwrap();
    }
    let refused = run_env(&url, &a, &["send", "Lobby", "to whom?"], &pw).await;
    assert!(
        !refused.ok && refused.stderr.contains("identity key of bob changed"),
        "{}",
        refused.stderr
    );
    let members = ok(&run_env(&url, &a, &["members", "Lobby"], &pw).await).to_owned();
    assert!(members.contains("KEY CHANGED"), "{members}");
    let wrong = run_env(&url, &a, &["trust", "bob", &"00".repeat(32)], &pw).await;
    assert!(!wrong.ok, "{}", wrong.stdout);
    let fp_words: Vec<&str> = bob_fp.split_whitespace().collect();
    let mut args = vec!["trust", "bob"];
    args.extend(fp_words);
    assert!(ok(&run_env(&url, &a, &args, &pw).await).contains("bob trusted"));
    ok(&run_env(&url, &a, &["send", "Lobby", "trusted again"], &pw).await);

    // Alice's profile, exported and imported elsewhere: the same identity,
    // a new device, which Bob's client announces before his next send.
    let file = home.path().join("alice.json");
    ok(&run_env(&url, &a, &["export-profile", file.to_str().unwrap()], &pw).await);
    let tablet = home.path().join("tablet");
    ok(&run_env(
        &url,
        &tablet,
        &["import-profile", file.to_str().unwrap()],
        &pw,
    )
    .await);
    let joined = ok(&run_env(&url, &tablet, &["join", "Lobby"], &pw).await).to_owned();
    assert!(joined.contains("in its group"), "{joined}");
    let devices = ok(&run_env(&url, &tablet, &["devices"], &pw).await).to_owned();
    assert_eq!(devices.lines().count(), 2, "{devices}");
    let sent = run_env(&url, &b, &["send", "Lobby", "hi tablet"], &pw).await;
    ok(&sent);
    assert!(
        sent.stderr.contains("new device in this room: alice"),
        "{}",
        sent.stderr
    );
    let h = ok(&run_env(&url, &tablet, &["history", "Lobby"], &pw).await).to_owned();
    assert!(h.contains("bob: hi tablet"), "{h}");
    t.stop().await;
}
