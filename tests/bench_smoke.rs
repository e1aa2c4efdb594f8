//! Runs the load generator's `smoke` mode (every scenario, tiny) against a
//! real server, so the benchmark keeps working as the code changes. No
//! numbers are asserted: speed is measured by scripts/bench.sh, not by tests.

mod common;

#[tokio::test]
async fn bench_smoke_mode_runs_every_scenario() {
    let t = common::TestServer::new();
    let url = t.url();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_e2ee-chat-bench"))
            .args([
                "--url",
                &url,
                "--server-pid",
                &std::process::id().to_string(),
                "smoke",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "fanout[server]",
        "fanout[baseline relay]",
        "PrivateMessage",
        "logins:",
        "durable[group commit]",
        "idle:",
        "rooms:",
        "passwords:",
        "commits 3 members: external join",
        "commits 5 members: external join",
        "history: room of 100 entries",
        "smoke: ok",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in\n{stdout}");
    }
    t.stop().await;
}
