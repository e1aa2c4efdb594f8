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
        "logins:",
        "durable[group commit]",
        "idle:",
        "rooms:",
        "passwords:",
        "smoke: ok",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in\n{stdout}");
    }
    t.stop().await;
}

/// The v3 scenarios, tiny, against a `protocol.version = 3` server.
#[tokio::test]
async fn bench_v3_scenarios_run() {
    let t = common::TestServer::with(|s| s.protocol.version = 3);
    let url = t.url();
    let out = tokio::task::spawn_blocking(move || {
        let pid = std::process::id().to_string();
        let run = |args: &[&str]| {
            let mut all = vec!["--url", &url, "--server-pid", &pid];
            all.extend_from_slice(args);
            std::process::Command::new(env!("CARGO_BIN_EXE_e2ee-chat-bench"))
                .args(all)
                .output()
                .unwrap()
        };
        [
            run(&[
                "fanout3",
                "--members",
                "4",
                "--senders",
                "2",
                "--messages",
                "20",
                "--rate",
                "0",
            ]),
            run(&["logins3", "--users", "5", "--concurrency", "2"]),
            run(&[
                "commits3",
                "--members",
                "3,5",
                "--commits",
                "2",
                "--timed-joins",
                "2",
            ]),
        ]
    })
    .await
    .unwrap();
    let mut stdout = String::new();
    for o in &out {
        stdout.push_str(&String::from_utf8_lossy(&o.stdout));
        assert!(
            o.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    for line in [
        "commits3 3 members: external join",
        "commits3 5 members: external join",
        "fanout[server v3]",
        "fanout[baseline relay]",
        "PrivateMessage",
        "logins",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in\n{stdout}");
    }
    t.stop().await;
}
