//! Process-wide counters for `/metrics` (Prometheus text format). Plain
//! atomics: they are statistics, not chat state, and every thread bumps them.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

pub static CONNECTIONS_OPEN: AtomicU64 = AtomicU64::new(0);
pub static CONNECTIONS_TOTAL: AtomicU64 = AtomicU64::new(0);
pub static LOGINS: AtomicU64 = AtomicU64::new(0);
pub static LOGIN_FAILURES: AtomicU64 = AtomicU64::new(0);
pub static MESSAGES_SENT: AtomicU64 = AtomicU64::new(0);
pub static MESSAGES_DELIVERED: AtomicU64 = AtomicU64::new(0);
pub static REQUESTS: AtomicU64 = AtomicU64::new(0);
pub static ERRORS: AtomicU64 = AtomicU64::new(0);
pub static STORE_COMMITS: AtomicU64 = AtomicU64::new(0);
pub static STORE_COMMITTED_WRITES: AtomicU64 = AtomicU64::new(0);
pub static STORE_COMMIT_MICROS: AtomicU64 = AtomicU64::new(0);
pub static CLUSTER_DROPPED: AtomicU64 = AtomicU64::new(0);
pub static CLUSTER_GAP_FILLS: AtomicU64 = AtomicU64::new(0);

pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

pub fn dec(counter: &AtomicU64) {
    counter.fetch_sub(1, Ordering::Relaxed);
}

/// Renders every counter in the Prometheus text exposition format.
/// Records one committed store batch of `writes` writes.
pub fn observe_commit(writes: usize, took: std::time::Duration) {
    inc(&STORE_COMMITS);
    add(&STORE_COMMITTED_WRITES, writes as u64);
    add(&STORE_COMMIT_MICROS, took.as_micros() as u64);
}

pub fn render() -> String {
    let rows: [(&str, &str, &str, &AtomicU64); 13] = [
        (
            "chat_cluster_dropped_total",
            "counter",
            "notifications to other processes not published (Redis away or queue full)",
            &CLUSTER_DROPPED,
        ),
        (
            "chat_cluster_gap_fills_total",
            "counter",
            "reads of messages another process's notification did not bring",
            &CLUSTER_GAP_FILLS,
        ),
        (
            "chat_connections",
            "gauge",
            "open websocket connections",
            &CONNECTIONS_OPEN,
        ),
        (
            "chat_connections_total",
            "counter",
            "websocket connections accepted",
            &CONNECTIONS_TOTAL,
        ),
        ("chat_logins_total", "counter", "successful logins", &LOGINS),
        (
            "chat_login_failures_total",
            "counter",
            "failed login proofs",
            &LOGIN_FAILURES,
        ),
        (
            "chat_requests_total",
            "counter",
            "requests received",
            &REQUESTS,
        ),
        (
            "chat_errors_total",
            "counter",
            "error replies sent",
            &ERRORS,
        ),
        (
            "chat_messages_sent_total",
            "counter",
            "messages durably stored",
            &MESSAGES_SENT,
        ),
        (
            "chat_messages_delivered_total",
            "counter",
            "message events pushed to sessions",
            &MESSAGES_DELIVERED,
        ),
        (
            "chat_store_commits_total",
            "counter",
            "store transactions committed",
            &STORE_COMMITS,
        ),
        (
            "chat_store_committed_writes_total",
            "counter",
            "writes in committed transactions",
            &STORE_COMMITTED_WRITES,
        ),
        (
            "chat_store_commit_seconds_total",
            "counter",
            "time spent committing (BEGIN to fsync)",
            &STORE_COMMIT_MICROS,
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, counter) in rows {
        let v = counter.load(Ordering::Relaxed);
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        if name == "chat_store_commit_seconds_total" {
            let _ = writeln!(out, "{name} {}", v as f64 / 1e6);
        } else {
            let _ = writeln!(out, "{name} {v}");
        }
    }
    out
}
