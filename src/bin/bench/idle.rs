//! `idle`: N connections, each logged in as its own user's device, then
//! left idle;
//! reports the server's resident memory per connection (RSS after minus RSS
//! before, with the users already registered and cached).

use std::time::Duration;

use e2ee_chat::client::conn::Conn;
use e2ee_chat::crypto::KeyPair;
use futures_util::{stream, StreamExt};

use crate::common::{self, BenchResult};

#[derive(Debug, Clone, clap::Args)]
pub struct IdleOpts {
    /// Connections (one user each).
    #[arg(long, default_value_t = 10000)]
    pub connections: usize,
    /// Connections opened at once.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
}

pub async fn run(url: &str, pid: Option<u32>, keys: &KeyPair, o: &IdleOpts) -> BenchResult<bool> {
    let run = hex::encode(e2ee_chat::crypto::random_bytes::<3>());
    let names: Vec<String> = (0..o.connections).map(|i| format!("i{run}-{i}")).collect();
    common::register_all(url, keys, &names).await?;
    // The user cache entry is made at registration, so it is in "before";
    // each login records a new device, which is in "after".
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = common::usage(pid);
    let clients: Vec<Result<Conn, String>> = stream::iter(names.iter().cloned())
        .map(|name| {
            let (url, keys) = (url.to_owned(), keys.clone());
            async move {
                let (c, _) = common::device_login(&url, &common::identity(&keys, &name)).await?;
                Ok(c)
            }
        })
        .buffer_unordered(o.concurrency.max(1))
        .collect()
        .await;
    let failed = clients.iter().filter(|c| c.is_err()).count();
    if let Some(Err(e)) = clients.iter().find(|c| c.is_err()) {
        eprintln!("idle: first failure: {e}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = common::usage(pid);
    let ok = clients.len() - failed;
    match (before, after) {
        (Some(b), Some(a)) => println!(
            "idle: {ok} logged-in connections; server RSS {:.1} MiB -> {:.1} MiB = {:.1} KiB per connection; failures {failed}",
            common::mib(b.rss_bytes),
            common::mib(a.rss_bytes),
            (a.rss_bytes as f64 - b.rss_bytes as f64) / 1024.0 / ok.max(1) as f64,
        ),
        _ => println!("idle: {ok} logged-in connections (no --server-pid: RSS not measured); failures {failed}"),
    }
    drop(clients);
    Ok(failed == 0)
}
