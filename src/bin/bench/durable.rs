//! `durable`: S senders, each alone in its own room, pipelining sends as
//! fast as their window allows; counts messages stored and delivered back
//! to their sender per second (a delivery follows the commit, so this is
//! messages durably committed). Run against a server with group commit and
//! one that commits every message alone (`store.group_commit = false`) to
//! get the ratio in one run.

use e2ee_chat::crypto::KeyPair;

use crate::common::BenchResult;
use crate::fanout::{self, FanoutOpts};

#[derive(Debug, Clone, clap::Args)]
pub struct DurableOpts {
    /// Senders, each in a room of its own.
    #[arg(long, default_value_t = 8)]
    pub senders: usize,
    /// Messages in all.
    #[arg(long, default_value_t = 20000)]
    pub messages: usize,
    /// Sends each sender keeps in flight.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
}

pub struct DurableReport {
    pub acked: usize,
    pub errors: usize,
    pub wall: f64,
}

impl DurableReport {
    pub fn per_sec(&self) -> f64 {
        self.acked as f64 / self.wall.max(1e-9)
    }
}

pub async fn run(
    url: &str,
    label: &str,
    pid: Option<u32>,
    keys: &KeyPair,
    o: &DurableOpts,
) -> BenchResult<DurableReport> {
    let senders = o.senders.max(1);
    let opts = FanoutOpts {
        rooms: senders,
        members: 1,
        senders: 1,
        rate: 0.0,
        messages: o.messages / senders * senders,
        window: o.window,
        text_bytes: 100,
    };
    let (server, _) = fanout::run(url, pid, keys, &opts, None).await?;
    let report = DurableReport {
        acked: server.deliveries,
        errors: server.errors + (server.expected - server.deliveries),
        wall: server.wall_secs,
    };
    println!(
        "durable[{label}]: {} messages from {senders} senders stored in {:.2} s = {:.0} durable messages/s; server CPU {}; errors {}",
        report.acked,
        report.wall,
        report.per_sec(),
        crate::common::fmt_opt(server.server_cpu_secs, "s"),
        report.errors,
    );
    Ok(report)
}
