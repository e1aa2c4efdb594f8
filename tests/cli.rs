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
async fn keygen_register_create_join_send_history() {
    let t = TestServer::new();
    let url = t.url();
    let home = tempfile::tempdir().unwrap();
    let (a, b) = alice_and_bob(&url, home.path(), None).await;
    let out = ok(&run(&url, &a, &["create", "Lobby"]).await).to_owned();
    assert!(out.contains("created Lobby"), "{out}");
    assert!(ok(&run(&url, &b, &["join", "lobby"]).await).contains("with 2 members"));
    // The first send announces bob, with his fingerprint, before sending;
    // the next one does not repeat it.
    let first = run(&url, &a, &["send", "Lobby", "hello", "bob"]).await;
    ok(&first);
    let bob_fp = ok(&run(&url, &b, &["fingerprint"]).await).to_owned();
    let bob_fp = bob_fp.trim().trim_start_matches("bob: ");
    assert!(
        first.stderr.contains("NEW RECIPIENT") && first.stderr.contains(bob_fp),
        "{}",
        first.stderr
    );
    let second = run(&url, &a, &["send", "Lobby", "again"]).await;
    assert!(!ok(&second).is_empty() && !second.stderr.contains("NEW RECIPIENT"));
    ok(&run(&url, &b, &["send", "Lobby", "hi alice"]).await);
    for dir in [&a, &b] {
        let h = ok(&run(&url, dir, &["history", "Lobby"]).await).to_owned();
        assert!(h.contains("alice ✓ hello bob"), "{h}");
        assert!(h.contains("bob ✓ hi alice"), "{h}");
    }
    let rooms = ok(&run(&url, &b, &["rooms"]).await).to_owned();
    assert!(
        rooms.contains("Lobby") && rooms.contains("alice"),
        "{rooms}"
    );
    let members = ok(&run(&url, &a, &["members", "Lobby"]).await).to_owned();
    assert!(
        members.contains("bob") && members.contains("pinned"),
        "{members}"
    );
    // The fingerprint alice pinned for bob is the one bob shows.
    let bob_says = ok(&run(&url, &b, &["fingerprint"]).await).to_owned();
    let alice_pinned = ok(&run(&url, &a, &["fingerprint", "bob"]).await).to_owned();
    assert_eq!(bob_says, alice_pinned);
    // Refuses to overwrite keys without --force.
    let again = run(&url, &a, &["keygen", "--user", "alice"]).await;
    assert!(
        !again.ok && again.stderr.contains("--force"),
        "{}",
        again.stderr
    );
    t.stop().await;
}

#[tokio::test]
async fn changed_keys_are_refused_loudly_until_trusted() {
    let home = tempfile::tempdir().unwrap();
    // First server: alice sees bob's keys and pins them.
    let t = TestServer::new();
    let url = t.url();
    let (a, b) = alice_and_bob(&url, home.path(), Some("Team")).await;
    ok(&run(&url, &a, &["members", "Team"]).await);
    t.stop().await;
    // A fresh server store: someone registers "bob" with other keys.
    let t = TestServer::new();
    let url = t.url();
    ok(&run(&url, &a, &["register"]).await);
    ok(&run(&url, &b, &["keygen", "--user", "bob", "--force"]).await);
    ok(&run(&url, &b, &["register"]).await);
    ok(&run(&url, &a, &["create", "Team"]).await);
    ok(&run(&url, &b, &["join", "Team"]).await);
    ok(&run(&url, &b, &["send", "Team", "trust me"]).await);
    let members = run(&url, &a, &["members", "Team"]).await;
    assert!(members.stdout.contains("KEY CHANGED"), "{}", members.stdout);
    assert!(
        members
            .stderr
            .contains("WARNING: the keys of bob have CHANGED"),
        "{}",
        members.stderr
    );
    let send = run(&url, &a, &["send", "Team", "secret"]).await;
    assert!(
        !send.ok && send.stderr.contains("keys of bob changed"),
        "{}",
        send.stderr
    );
    let history = ok(&run(&url, &a, &["history", "Team"]).await).to_owned();
    assert!(
        history.contains("bob ! [untrusted") && !history.contains("trust me"),
        "{history}"
    );
    // Trust takes the fingerprint alice compared with bob, never whatever
    // the server serves: a different one is refused and changes nothing.
    let wrong = "00".repeat(32);
    let refused = run(&url, &a, &["trust", "bob", &wrong]).await;
    assert!(
        !refused.ok && refused.stderr.contains("NOT trusted"),
        "{}",
        refused.stderr
    );
    assert!(!run(&url, &a, &["send", "Team", "secret"]).await.ok);
    // After an out-of-band check, alice trusts the new keys, typed as shown.
    let bob_says = ok(&run(&url, &b, &["fingerprint"]).await).to_owned();
    let fp = bob_says.trim().trim_start_matches("bob: ");
    let mut args = vec!["trust", "bob"];
    args.extend(fp.split(' '));
    let trusted = ok(&run(&url, &a, &args).await).to_owned();
    assert!(trusted.contains("now trusted"), "{trusted}");
    ok(&run(&url, &a, &["send", "Team", "secret"]).await);
    let history = ok(&run(&url, &b, &["history", "Team"]).await).to_owned();
    assert!(history.contains("alice ✓ secret"), "{history}");
    t.stop().await;
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
    for f in ["sign_key.pem", "enc_key.pem", "pins.toml", "profile.toml"] {
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

#[tokio::test]
async fn interactive_chat_in_a_real_terminal() {
    if Command::new("tmux").arg("-V").output().is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "tmux is needed for this test (apt-get install tmux)"
        );
        eprintln!("SKIP interactive chat: tmux is not installed");
        return;
    }
    let t = TestServer::new();
    let url = t.url();
    let home = tempfile::tempdir().unwrap();
    let (a, b) = alice_and_bob(&url, home.path(), Some("Terminal")).await;
    let session = format!("e2ee-test-{}", std::process::id());
    let command = format!("{CLI} --profile {} --server {url} chat", a.display());
    start_tmux(&session, (140, 30), &command);
    let screen = screen_shows(&session, "connected to").await;
    assert!(screen.contains("Terminal"), "{screen}");
    // A message from bob appears on alice's screen, verified.
    ok(&run(&url, &b, &["send", "Terminal", "hello over tmux"]).await);
    let screen = screen_shows(&session, "hello over tmux").await;
    assert!(screen.contains("bob ✓ hello over tmux"), "{screen}");
    // Alice types a message; bob reads it.
    tmux(&[
        "send-keys",
        "-t",
        &session,
        "typed in the terminal",
        "Enter",
    ]);
    let screen = screen_shows(&session, "alice ✓ typed").await;
    assert!(screen.contains("alice ✓ typed in the terminal"), "{screen}");
    let history = ok(&run(&url, &b, &["history", "Terminal"]).await).to_owned();
    assert!(
        history.contains("alice ✓ typed in the terminal"),
        "{history}"
    );
    // More lines than the window holds: PageUp shows the older ones.
    let mut carol = t.user("carol", 2).await;
    let rid = carol.list_rooms(None, None).await.unwrap().0[0]
        .room_id
        .clone();
    carol.join_room(&rid, None).await.unwrap();
    for i in 0..40 {
        carol
            .send_text(&rid, &format!("scroll-{i:02}"))
            .await
            .unwrap();
    }
    let screen = screen_shows(&session, "scroll-39").await;
    assert!(!screen.contains("scroll-05"), "{screen}");
    for _ in 0..3 {
        tmux(&["send-keys", "-t", &session, "PPage"]);
    }
    let screen = screen_shows(&session, "scroll-05").await;
    assert!(
        screen.contains("scroll-05") && screen.contains("newer lines"),
        "{screen}"
    );
    for _ in 0..3 {
        tmux(&["send-keys", "-t", &session, "NPage"]);
    }
    let screen = screen_shows(&session, "scroll-39").await;
    assert!(!screen.contains("newer lines"), "{screen}");
    // /help lists the owner commands; an unknown command says so; /kick
    // works from the chat window and shows in the timeline.
    tmux(&["send-keys", "-t", &session, "/help", "Enter"]);
    let screen = screen_shows(&session, "/kick USER").await;
    assert!(screen.contains("/kick USER"), "{screen}");
    tmux(&["send-keys", "-t", &session, "/frobnicate", "Enter"]);
    let screen = screen_shows(&session, "unknown command /frobnicate").await;
    assert!(screen.contains("unknown command /frobnicate"), "{screen}");
    tmux(&["send-keys", "-t", &session, "/kick bob", "Enter"]);
    let screen = screen_shows(&session, "bob left (kicked)").await;
    assert!(screen.contains("bob left (kicked)"), "{screen}");
    tmux(&["send-keys", "-t", &session, "/quit", "Enter"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    tmux(&["kill-session", "-t", &session]);
    t.stop().await;
}

/// `export-profile` writes the web client's profile file; `import-profile`
/// makes a working profile of it (the same identity logs in and reads), and
/// refuses a wrong passphrase, a tampered file and an absurd iteration count.
#[tokio::test]
async fn profile_files_move_an_identity_between_devices() {
    let t = TestServer::new();
    let url = t.url();
    let home = tempfile::tempdir().unwrap();
    let (laptop, phone) = (home.path().join("laptop"), home.path().join("phone"));
    let file = home.path().join("alice.json");
    let pass = [("E2EE_CHAT_PASSPHRASE", "a long passphrase")];
    ok(&run_env(
        &url,
        &laptop,
        &["keygen", "--user", "alice", "--encrypt"],
        &pass,
    )
    .await);
    ok(&run_env(&url, &laptop, &["register"], &pass).await);
    ok(&run_env(&url, &laptop, &["create", "Notes"], &pass).await);
    ok(&run_env(&url, &laptop, &["send", "Notes", "from the laptop"], &pass).await);
    ok(&run_env(
        &url,
        &laptop,
        &["export-profile", file.to_str().unwrap()],
        &pass,
    )
    .await);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("\"format\": \"e2ee-chat-profile\""), "{text}");
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    // Issue 20 item 17: the file is its owner's alone, and an existing file
    // is replaced only with --force.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let r = run_env(
        &url,
        &laptop,
        &["export-profile", file.to_str().unwrap()],
        &pass,
    )
    .await;
    assert!(!r.ok && r.stderr.contains("--force"), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
    ok(&run_env(
        &url,
        &laptop,
        &["export-profile", file.to_str().unwrap(), "--force"],
        &pass,
    )
    .await);
    let text = std::fs::read_to_string(&file).unwrap();
    // Without --server, the import says that the server is the file's.
    let out = Command::new(CLI)
        .arg("--profile")
        .arg(home.path().join("tablet"))
        .args(["import-profile", file.to_str().unwrap()])
        .env("E2EE_CHAT_PASSPHRASE", "a long passphrase")
        .env_remove("E2EE_CHAT_SERVER")
        .env_remove("E2EE_CHAT_PROFILE")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!("server: {url} (named by the file")),
        "{said}"
    );

    let wrong = [("E2EE_CHAT_PASSPHRASE", "not it")];
    let r = run_env(
        &url,
        &phone,
        &["import-profile", file.to_str().unwrap()],
        &wrong,
    )
    .await;
    assert!(
        !r.ok && r.stderr.contains("wrong passphrase"),
        "{}",
        r.stderr
    );
    for (what, bad) in [
        (
            "tampered",
            text.replacen("\"wrapped\": \"", "\"wrapped\": \"AAAA", 1),
        ),
        ("renamed", text.replace("\"alice\"", "\"mallory\"")),
        ("slow", text.replace("600000", "4000000000")),
    ] {
        let path = home.path().join(format!("{what}.json"));
        std::fs::write(&path, bad).unwrap();
        let r = run_env(
            &url,
            &phone,
            &["import-profile", path.to_str().unwrap()],
            &pass,
        )
        .await;
        assert!(!r.ok, "{what} was imported");
    }
    assert!(!phone.join("sign_key.pem").exists());

    let out = ok(&run_env(
        &url,
        &phone,
        &["import-profile", file.to_str().unwrap()],
        &pass,
    )
    .await)
    .to_owned();
    let laptop_fp = ok(&run_env(&url, &laptop, &["fingerprint"], &pass).await).to_owned();
    let fp = laptop_fp.trim().strip_prefix("alice: ").unwrap();
    assert!(out.contains(fp), "{out} vs {laptop_fp}");
    // The imported keys are stored encrypted, and the same identity reads.
    let pem = std::fs::read_to_string(phone.join("sign_key.pem")).unwrap();
    assert!(pem.contains("ENCRYPTED PRIVATE KEY"));
    let history = ok(&run_env(&url, &phone, &["history", "Notes"], &pass).await).to_owned();
    assert!(history.contains("from the laptop"), "{history}");
    t.stop().await;
}

/// Protocol v3 (`--protocol 3` against a v3 server): the profile's signing
/// key is the identity key and the device lives in the profile's
/// `device.db`. Create, join by external commit, talk both ways with the
/// other's device announced first, history from the device's own store,
/// devices, and a kick whose removal commit the next send makes.
#[tokio::test]
async fn protocol_v3_create_join_talk_history_and_a_kick() {
    let t = TestServer::with(|s| s.protocol.version = 3);
    let url = t.url();
    let home = tempfile::tempdir().unwrap();
    let v3 = [("E2EE_CHAT_PROTOCOL", "3")];
    let (a, b) = (home.path().join("alice"), home.path().join("bob"));
    for (dir, user) in [(&a, "alice"), (&b, "bob")] {
        ok(&run(&url, dir, &["keygen", "--user", user]).await);
        let r = run_env(&url, dir, &["register"], &v3).await;
        assert!(ok(&r).contains("protocol v3"), "{}", r.stdout);
    }
    let out = ok(&run_env(&url, &a, &["create", "Lobby"], &v3).await).to_owned();
    assert!(out.contains("created Lobby"), "{out}");
    let joined = ok(&run_env(&url, &b, &["join", "lobby"], &v3).await).to_owned();
    assert!(joined.contains("in its group"), "{joined}");

    let first = run_env(&url, &a, &["send", "Lobby", "hello", "bob"], &v3).await;
    ok(&first);
    assert!(
        first.stderr.contains("new device in this room: bob"),
        "{}",
        first.stderr
    );
    let again = run_env(&url, &a, &["send", "Lobby", "again"], &v3).await;
    assert!(!ok(&again).is_empty() && !again.stderr.contains("new device"));
    ok(&run_env(&url, &b, &["send", "Lobby", "hi alice"], &v3).await);
    for dir in [&a, &b] {
        let h = ok(&run_env(&url, dir, &["history", "Lobby"], &v3).await).to_owned();
        assert!(h.contains("alice: hello bob"), "{h}");
        assert!(h.contains("alice: again"), "{h}");
        assert!(h.contains("bob: hi alice"), "{h}");
    }
    let devices = ok(&run_env(&url, &a, &["devices"], &v3).await).to_owned();
    assert_eq!(devices.lines().count(), 1, "{devices}");
    assert!(devices.contains("(this device)"), "{devices}");
    let rooms = ok(&run_env(&url, &b, &["rooms"], &v3).await).to_owned();
    assert!(rooms.contains("Lobby"), "{rooms}");

    // A kick leaves Bob's leaf behind: Alice's next send commits its removal.
    ok(&run_env(&url, &a, &["kick", "Lobby", "bob"], &v3).await);
    ok(&run_env(&url, &a, &["send", "Lobby", "bob", "is", "out"], &v3).await);
    let h = ok(&run_env(&url, &a, &["history", "Lobby"], &v3).await).to_owned();
    assert!(h.contains("alice: bob is out"), "{h}");
    let refused = run_env(&url, &b, &["send", "Lobby", "still", "here?"], &v3).await;
    assert!(!refused.ok, "{}", refused.stdout);
    t.stop().await;
}

/// The epoch of `room` as `rooms` lists it to `dir`'s user (protocol v3).
async fn listed_epoch(url: &str, dir: &Path, room: &str) -> u64 {
    let rooms = ok(&run_env(url, dir, &["rooms"], &[("E2EE_CHAT_PROTOCOL", "3")]).await).to_owned();
    let line = rooms
        .lines()
        .find(|l| l.starts_with(room))
        .unwrap_or_else(|| panic!("{room} not listed: {rooms}"));
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[tokio::test]
async fn protocol_v3_chat_screen_talks_announces_and_removes_who_left() {
    if Command::new("tmux").arg("-V").output().is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "tmux is needed for this test (apt-get install tmux)"
        );
        eprintln!("SKIP v3 chat screen: tmux is not installed");
        return;
    }
    let t = TestServer::with(|s| s.protocol.version = 3);
    let url = t.url();
    let home = tempfile::tempdir().unwrap();
    let v3 = [("E2EE_CHAT_PROTOCOL", "3")];
    let [a, b, c] = ["alice", "bob", "carol"].map(|u| home.path().join(u));
    for (dir, user) in [(&a, "alice"), (&b, "bob"), (&c, "carol")] {
        ok(&run(&url, dir, &["keygen", "--user", user]).await);
        ok(&run_env(&url, dir, &["register"], &v3).await);
    }
    ok(&run_env(&url, &a, &["create", "Screen"], &v3).await);
    ok(&run_env(&url, &b, &["join", "Screen"], &v3).await);
    ok(&run_env(&url, &b, &["send", "Screen", "before the screen"], &v3).await);

    let session = format!("e2ee-test3-{}", std::process::id());
    let command = format!(
        "{CLI} --profile {} --server {url} --protocol 3 chat",
        a.display()
    );
    start_tmux(&session, (200, 40), &command);
    let screen = screen_shows(&session, "before the screen").await;
    assert!(screen.contains("bob ✓ before the screen"), "{screen}");
    assert!(screen.contains("new device in this room: bob"), "{screen}");

    // Live both ways.
    ok(&run_env(&url, &b, &["send", "Screen", "hello screen"], &v3).await);
    let screen = screen_shows(&session, "hello screen").await;
    assert!(screen.contains("bob ✓ hello screen"), "{screen}");
    tmux(&["send-keys", "-t", &session, "typed in v3", "Enter"]);
    let screen = screen_shows(&session, "alice ✓ typed in v3").await;
    assert!(screen.contains("alice ✓ typed in v3"), "{screen}");
    let h = ok(&run_env(&url, &b, &["history", "Screen"], &v3).await).to_owned();
    assert!(h.contains("alice: typed in v3"), "{h}");

    // A newcomer is shown with the fingerprint, and their device as it enters.
    ok(&run_env(&url, &c, &["join", "Screen"], &v3).await);
    let screen = screen_shows(&session, "new device in this room: carol").await;
    assert!(screen.contains("carol joined (fingerprint"), "{screen}");
    assert!(
        screen.contains("new device in this room: carol"),
        "{screen}"
    );

    // Bob leaves: the screen's device commits the removal of his leaf.
    let before = listed_epoch(&url, &c, "Screen").await;
    ok(&run_env(&url, &b, &["leave", "Screen"], &v3).await);
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
    ok(&run_env(&url, &c, &["send", "Screen", "after bob"], &v3).await);
    let screen = screen_shows(&session, "after bob").await;
    assert!(screen.contains("carol ✓ after bob"), "{screen}");
    tmux(&["send-keys", "-t", &session, "/quit", "Enter"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    tmux(&["kill-session", "-t", &session]);
    t.stop().await;
}

#[tokio::test]
async fn protocol_v3_members_trust_and_a_second_device_from_an_exported_profile() {
    let t = TestServer::with(|s| s.protocol.version = 3);
    let url = t.url();
    let home = tempfile::tempdir().unwrap();
    let v3 = [
        ("E2EE_CHAT_PROTOCOL", "3"),
        ("E2EE_CHAT_PASSPHRASE", "a long passphrase"),
    ];
    let (a, b) = (home.path().join("alice"), home.path().join("bob"));
    for (dir, user) in [(&a, "alice"), (&b, "bob")] {
        ok(&run_env(&url, dir, &["keygen", "--user", user, "--encrypt"], &v3).await);
        ok(&run_env(&url, dir, &["register"], &v3).await);
    }
    ok(&run_env(&url, &a, &["create", "Lobby"], &v3).await);
    ok(&run_env(&url, &b, &["join", "Lobby"], &v3).await);
    ok(&run_env(&url, &a, &["send", "Lobby", "hello"], &v3).await);
    let members = ok(&run_env(&url, &a, &["members", "Lobby"], &v3).await).to_owned();
    let bob_line = members.lines().find(|l| l.starts_with("bob")).unwrap();
    assert!(
        bob_line.contains("1 device(s) in the group  pinned"),
        "{members}"
    );
    let bob_fp = ok(&run_env(&url, &b, &["fingerprint"], &v3).await).to_owned();
    let bob_fp = bob_fp.trim().strip_prefix("bob: ").unwrap().to_owned();
    let seen = ok(&run_env(&url, &a, &["fingerprint", "bob"], &v3).await).to_owned();
    assert_eq!(seen.trim(), format!("bob: {bob_fp}"));
    assert!(bob_line.contains(&bob_fp), "{bob_line} / {bob_fp}");

    // What a hostile server would make Alice see: another key for Bob than
    // the one she pinned. Sends are refused, `members` says so, and `trust`
    // with the fingerprint Bob read out (the served key's) lifts it.
    {
        use e2ee_chat::client::device_store::DeviceStore;
        let (store, _) = DeviceStore::open(&a.join("device.db")).unwrap();
        let other = common::phone3::identity3("mallory", 5);
        store.repin("bob", &other.der).unwrap();
    }
    let refused = run_env(&url, &a, &["send", "Lobby", "to whom?"], &v3).await;
    assert!(
        !refused.ok && refused.stderr.contains("identity key of bob changed"),
        "{}",
        refused.stderr
    );
    let members = ok(&run_env(&url, &a, &["members", "Lobby"], &v3).await).to_owned();
    assert!(members.contains("KEY CHANGED"), "{members}");
    let wrong = run_env(&url, &a, &["trust", "bob", &"00".repeat(32)], &v3).await;
    assert!(!wrong.ok, "{}", wrong.stdout);
    let fp_words: Vec<&str> = bob_fp.split_whitespace().collect();
    let mut args = vec!["trust", "bob"];
    args.extend(fp_words);
    assert!(ok(&run_env(&url, &a, &args, &v3).await).contains("bob trusted"));
    ok(&run_env(&url, &a, &["send", "Lobby", "trusted again"], &v3).await);

    // Alice's profile, exported and imported elsewhere: the same identity,
    // a new device, which Bob's client announces before his next send.
    let file = home.path().join("alice.json");
    ok(&run_env(&url, &a, &["export-profile", file.to_str().unwrap()], &v3).await);
    let tablet = home.path().join("tablet");
    ok(&run_env(
        &url,
        &tablet,
        &["import-profile", file.to_str().unwrap()],
        &v3,
    )
    .await);
    let joined = ok(&run_env(&url, &tablet, &["join", "Lobby"], &v3).await).to_owned();
    assert!(joined.contains("in its group"), "{joined}");
    let devices = ok(&run_env(&url, &tablet, &["devices"], &v3).await).to_owned();
    assert_eq!(devices.lines().count(), 2, "{devices}");
    let sent = run_env(&url, &b, &["send", "Lobby", "hi tablet"], &v3).await;
    ok(&sent);
    assert!(
        sent.stderr.contains("new device in this room: alice"),
        "{}",
        sent.stderr
    );
    let h = ok(&run_env(&url, &tablet, &["history", "Lobby"], &v3).await).to_owned();
    assert!(h.contains("bob: hi tablet"), "{h}");
    t.stop().await;
}
