//! The Redis side of the cluster: one connection that publishes (batched
//! into pipelines, in order) and one that subscribes (the control channel
//! and one channel per room running here). Both reconnect on their own;
//! after a new subscription the Registry and every subscribed room are told
//! (`Up`, `Subscribed`), so they read what they missed from the database.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;

use super::outbox::{Outbox, Outgoing};
use super::{decode_feed, FromCluster, ProcId, RoomFeed, SubCmd};
use crate::config::ClusterSettings;

/// Most publishes in one pipeline.
const BATCH: usize = 512;
const TIMEOUT: Duration = Duration::from_secs(5);

/// The client for `cluster.redis_url`. `rediss://` verifies the server's
/// certificate unless `cluster.redis_tls_verify` is false (Heroku's
/// Key-Value Store presents a self-signed one).
pub fn client(settings: &ClusterSettings) -> Result<redis::Client, String> {
    let mut url = settings.redis_url.clone();
    if url.starts_with("rediss://") && !settings.redis_tls_verify && !url.contains('#') {
        url.push_str("#insecure");
    }
    redis::Client::open(url).map_err(|e| format!("cluster.redis_url: {e}"))
}

/// The URL without its password, for logs.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "(unparsable url)".into(),
    }
}

/// Publishes whatever is queued, in order, one pipeline per batch. When a
/// batch cannot be sent, its messages are dropped (and counted): receivers
/// notice the seq gap or reload on reconnect, and read the database. Its
/// control notifications are kept and go first once Redis is back (with
/// backoff while it is away), so no process keeps a stale view of a room.
pub async fn publisher(
    client: redis::Client,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    outbox: Arc<Outbox>,
) {
    let mut conn: Option<ConnectionManager> = None;
    let mut batch: Vec<Outgoing> = Vec::with_capacity(BATCH);
    let mut retry: Vec<Outgoing> = Vec::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        if retry.is_empty() {
            if queue.recv_many(&mut batch, BATCH).await == 0 {
                return;
            }
        } else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            while batch.len() < BATCH {
                match queue.try_recv() {
                    Ok(o) => batch.push(o),
                    Err(_) => break,
                }
            }
        }
        let items: Vec<Outgoing> = retry.drain(..).chain(batch.drain(..)).collect();
        if conn.is_none() {
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(TIMEOUT))
                .set_response_timeout(Some(TIMEOUT));
            match tokio::time::timeout(
                TIMEOUT,
                ConnectionManager::new_with_config(client.clone(), config),
            )
            .await
            {
                Ok(Ok(c)) => conn = Some(c),
                Ok(Err(e)) => log::warn!("redis publish connection: {e}"),
                Err(_) => log::warn!("redis publish connection: timed out"),
            }
        }
        let sent = match conn.as_mut() {
            Some(c) => {
                let mut pipe = redis::pipe();
                for o in &items {
                    pipe.publish(&o.channel, &o.payload).ignore();
                }
                match pipe.query_async::<()>(c).await {
                    Ok(()) => true,
                    Err(e) => {
                        log::warn!("redis publish failed (receivers will read the database): {e}");
                        false
                    }
                }
            }
            None => false,
        };
        if sent {
            backoff = Duration::from_millis(100);
        }
        for o in items {
            if sent || !o.control {
                if !sent {
                    crate::metrics::add(&crate::metrics::CLUSTER_DROPPED, 1);
                }
                outbox.release(&o);
            } else {
                retry.push(o);
            }
        }
    }
}

/// Subscribes and dispatches, reconnecting with backoff for as long as the
/// server runs.
pub async fn subscriber(
    client: redis::Client,
    prefix: Arc<str>,
    me: ProcId,
    registry: Recipient<FromCluster>,
    mut cmds: mpsc::UnboundedReceiver<SubCmd>,
) {
    let ctl = format!("{prefix}:ctl");
    let room_prefix = format!("{prefix}:room:");
    let mut rooms: HashMap<String, Recipient<RoomFeed>> = HashMap::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        let pubsub = match tokio::time::timeout(TIMEOUT, client.get_async_pubsub()).await {
            Ok(Ok(p)) => p,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".into(),
                };
                log::warn!("redis subscribe connection: {why}; retrying in {backoff:?}");
                // Keep the wanted set current while away.
                let wait = tokio::time::sleep(backoff);
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        _ = &mut wait => break,
                        cmd = cmds.recv() => match cmd {
                            Some(cmd) => apply(&mut rooms, cmd),
                            None => return,
                        },
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let mut channels = vec![ctl.clone()];
        channels.extend(rooms.keys().map(|id| format!("{room_prefix}{id}")));
        if let Err(e) = sink.subscribe(&channels).await {
            log::warn!("redis subscribe: {e}");
            continue;
        }
        backoff = Duration::from_millis(100);
        log::info!(
            "redis: subscribed to {} channels (process {me:016x})",
            channels.len()
        );
        registry.do_send(FromCluster::Up);
        for room in rooms.values() {
            room.do_send(RoomFeed::Subscribed);
        }
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    let channel = msg.get_channel_name();
                    if channel == ctl {
                        match ciborium::from_reader::<super::Ctl, _>(msg.get_payload_bytes()) {
                            Ok(event) if event.sender() != Some(me) => {
                                registry.do_send(FromCluster::Ctl(event));
                            }
                            Ok(_) => {}
                            Err(e) => log::warn!("bad control event: {e}"),
                        }
                    } else if let Some(room_id) = channel.strip_prefix(&room_prefix) {
                        if let (Some(room), Some(feed)) = (
                            rooms.get(room_id),
                            decode_feed(room_id, msg.get_payload_bytes()),
                        ) {
                            room.do_send(feed);
                        }
                    }
                }
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else { return };
                    let result = match &cmd {
                        SubCmd::Room(id, _) => sink.subscribe(format!("{room_prefix}{id}")).await,
                        SubCmd::Leave(id) => sink.unsubscribe(format!("{room_prefix}{id}")).await,
                    };
                    let subscribed = match &cmd {
                        SubCmd::Room(_, room) => Some(room.clone()),
                        SubCmd::Leave(_) => None,
                    };
                    apply(&mut rooms, cmd);
                    if result.is_err() {
                        break;
                    }
                    if let Some(room) = subscribed {
                        room.do_send(RoomFeed::Subscribed);
                    }
                }
            }
        }
        log::warn!("redis subscription lost; reconnecting");
    }
}

fn apply(rooms: &mut HashMap<String, Recipient<RoomFeed>>, cmd: SubCmd) {
    match cmd {
        SubCmd::Room(id, room) => {
            rooms.insert(id, room);
        }
        SubCmd::Leave(id) => {
            rooms.remove(&id);
        }
    }
}
