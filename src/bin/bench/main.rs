//! `e2ee-chat-bench`: a load generator for a running e2ee-chat server, over
//! real websockets. Every scenario is bounded in count and time and stops by
//! itself. See scripts/bench.sh and BENCHMARKS.md.
//!
//! Scenarios: `fanout` (with the baseline relay in the same run), `logins`,
//! `durable`, `idle`, `rooms`, `passwords`, `history`, `commits` (groups
//! growing on the wire), `mls` (in process, no server), and `smoke` (all of
//! them, tiny, for the test suite).

mod commits;
mod common;
mod durable;
mod fanout;
mod history;
mod idle;
mod logins;
mod mls;
mod passwords;
mod relay;
mod rooms;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Load generator for e2ee-chat (loopback only)")]
struct Cli {
    /// Websocket URL of the server under test.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws", global = true)]
    url: String,
    /// The server's process id, to read its CPU time and RSS from /proc.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// More processes of the same server (a cluster): `fanout` spreads its
    /// members round-robin over `--url` and these.
    #[arg(long, global = true, value_delimiter = ',')]
    more_urls: Vec<String>,
    /// Their process ids: CPU and RSS are summed over every process.
    #[arg(long, global = true, value_delimiter = ',')]
    more_pids: Vec<u32>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// R rooms × M members, S senders; plus the same through a bare relay.
    Fanout {
        #[command(flatten)]
        opts: fanout::FanoutOpts,
        /// Skip the baseline relay run.
        #[arg(long)]
        no_baseline: bool,
    },
    /// Concurrent logins, each with a device certificate.
    Logins {
        #[command(flatten)]
        opts: logins::LoginOpts,
    },
    /// Acknowledged (durable) sends per second.
    Durable {
        #[command(flatten)]
        opts: durable::DurableOpts,
        /// A second server with `store.group_commit = false`, for the ratio.
        #[arg(long)]
        compare_url: Option<String>,
        #[arg(long)]
        compare_pid: Option<u32>,
    },
    /// Server CPU per `list_rooms` over a large directory.
    Rooms {
        #[command(flatten)]
        opts: rooms::RoomsOpts,
    },
    /// One account floods `history` on a big room; a bystander's sends.
    History {
        #[command(flatten)]
        opts: history::HistoryOpts,
    },
    /// A wrong-password flood: hashes checked and server memory.
    Passwords {
        #[command(flatten)]
        opts: passwords::PasswordOpts,
    },
    /// Memory per idle logged-in connection.
    Idle {
        #[command(flatten)]
        opts: idle::IdleOpts,
    },
    /// A room grown by external joins on the wire; client time per join
    /// and server CPU per commit at each size.
    Commits {
        #[command(flatten)]
        opts: commits::CommitsOpts,
    },
    /// The Delivery Service's core in process (no server): sizes and CPU
    /// per commit at N members.
    Mls {
        #[command(flatten)]
        opts: mls::MlsOpts,
    },
    /// Every scenario at a tiny size (a few seconds), to keep the bench working.
    Smoke,
}

fn main() {
    let cli = Cli::parse();
    if let Command::Mls { opts } = &cli.command {
        match mls::run(opts) {
            Ok(true) => return,
            Ok(false) => std::process::exit(1),
            Err(e) => {
                eprintln!("e2ee-chat-bench: {e}");
                std::process::exit(1);
            }
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ok = rt.block_on(run(cli));
    match ok {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("e2ee-chat-bench: the run had failures (see above)");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("e2ee-chat-bench: {e}");
            std::process::exit(1);
        }
    }
}

async fn run(cli: Cli) -> common::BenchResult<bool> {
    let keys = tokio::task::spawn_blocking(common::shared_keys)
        .await
        .map_err(|e| e.to_string())?;
    let (url, pid) = (cli.url.as_str(), cli.server_pid);
    let _ = common::MORE_URLS.set(cli.more_urls.clone());
    let _ = common::MORE_PIDS.set(cli.more_pids.clone());
    match cli.command {
        Command::Fanout { opts, no_baseline } => {
            fanout_with_baseline(url, pid, &keys, &opts, !no_baseline).await
        }
        Command::Logins { opts } => logins::run(url, pid, &keys, &opts).await,
        Command::Commits { opts } => commits::run(url, pid, &keys, &opts).await,
        Command::Durable {
            opts,
            compare_url,
            compare_pid,
        } => {
            let group = durable::run(url, "group commit", pid, &keys, &opts).await?;
            let mut ok = group.errors == 0;
            if let Some(other) = compare_url {
                let single =
                    durable::run(&other, "one commit per message", compare_pid, &keys, &opts)
                        .await?;
                println!(
                    "durable: group commit is {:.1}x one-commit-per-message",
                    group.per_sec() / single.per_sec().max(1e-9)
                );
                ok &= single.errors == 0;
            }
            Ok(ok)
        }
        Command::Idle { opts } => idle::run(url, pid, &keys, &opts).await,
        Command::Passwords { opts } => passwords::run(url, pid, &keys, &opts).await,
        Command::History { opts } => history::run(url, pid, &keys, &opts).await,
        Command::Rooms { opts } => rooms::run(url, pid, &keys, &opts).await,
        Command::Smoke => smoke(url, pid, &keys).await,
        Command::Mls { .. } => unreachable!("run without a server, in main"),
    }
}

/// Prints a server run and the relay's; whether both delivered everything.
fn compare(
    label: &str,
    server: &fanout::FanoutReport,
    base: Option<&fanout::FanoutReport>,
) -> bool {
    server.print();
    let mut ok = server.deliveries == server.expected && server.errors == 0;
    if let Some(base) = base {
        base.print();
        println!(
            "{label}: server delivers {:.0}% of the baseline relay's deliveries/s",
            100.0 * server.per_sec() / base.per_sec().max(1e-9)
        );
        ok &= base.deliveries == base.expected;
    }
    ok
}

async fn fanout_with_baseline(
    url: &str,
    pid: Option<u32>,
    keys: &e2ee_chat::crypto::KeyPair,
    opts: &fanout::FanoutOpts,
    baseline: bool,
) -> common::BenchResult<bool> {
    let relay_url = baseline.then(|| relay::start(2));
    let (server, base) = fanout::run(url, pid, keys, opts, relay_url.as_deref()).await?;
    println!(
        "fanout: {:.0} messages stored and acknowledged per second",
        (opts.messages / opts.rooms * opts.rooms) as f64 / server.wall_secs.max(1e-9)
    );
    Ok(compare("fanout", &server, base.as_ref()))
}

async fn smoke(
    url: &str,
    pid: Option<u32>,
    keys: &e2ee_chat::crypto::KeyPair,
) -> common::BenchResult<bool> {
    let fo = fanout::FanoutOpts {
        rooms: 2,
        members: 3,
        senders: 2,
        rate: 0.0,
        messages: 20,
        window: 4,
        text_bytes: 50,
    };
    let mut ok = fanout_with_baseline(url, pid, keys, &fo, true).await?;
    let rated = fanout::FanoutOpts {
        rate: 200.0,
        rooms: 1,
        ..fo
    };
    let (r, _) = fanout::run(url, pid, keys, &rated, None).await?;
    r.print();
    ok &= r.deliveries == r.expected;
    ok &= logins::run(
        url,
        pid,
        keys,
        &logins::LoginOpts {
            users: 10,
            concurrency: 3,
        },
    )
    .await?;
    let d = durable::DurableOpts {
        senders: 3,
        messages: 30,
        window: 4,
    };
    let report = durable::run(url, "group commit", pid, keys, &d).await?;
    ok &= report.acked == 30 && report.errors == 0;
    ok &= idle::run(
        url,
        pid,
        keys,
        &idle::IdleOpts {
            connections: 10,
            concurrency: 4,
        },
    )
    .await?;
    ok &= rooms::run(
        url,
        pid,
        keys,
        &rooms::RoomsOpts {
            rooms: 30,
            lists: 20,
            concurrency: 2,
        },
    )
    .await?;
    ok &= passwords::run(
        url,
        pid,
        keys,
        &passwords::PasswordOpts {
            users: 2,
            joins: 6,
            rooms: 1,
            paced: true,
            idle_secs: 0,
        },
    )
    .await?;
    ok &= commits::run(
        url,
        pid,
        keys,
        &commits::CommitsOpts {
            members: vec![3, 5],
            commits: 2,
            timed_joins: 2,
        },
    )
    .await?;
    ok &= history::run(
        url,
        pid,
        keys,
        &history::HistoryOpts {
            messages: 100,
            connections: 2,
            rate: 20.0,
            bystander_rate: 5.0,
            secs: 1,
        },
    )
    .await?;
    ok &= mls::run(&mls::MlsOpts {
        members: vec![3],
        commits: 2,
    })?;
    println!("smoke: {}", if ok { "ok" } else { "FAILED" });
    Ok(ok)
}
