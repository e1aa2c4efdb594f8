//! e2ee-chat: a group chat server that stores and relays end-to-end
//! encrypted messages it cannot read, and the client library that speaks its
//! protocol (`docs/PROTOCOL.md`).
//!
//! Layout, one file per concern:
//!
//! - [`protocol`]: requests, replies, events; the strict CBOR decoder; error codes.
//! - [`crypto`]: key validation, signature inputs, RSA-PSS/OAEP, AES-GCM.
//! - [`validate`]: usernames, room names, passwords.
//! - [`session`]: the actor behind each websocket connection; [`handle`]:
//!   how the other actors reach one (`SessionHandle`, `Push`).
//! - [`registry`]: the actor for accounts, login lookups, presence and the room directory.
//! - [`room`]: one actor per room: members, checks, ordering, fan-out.
//! - [`store`]: the `Store` trait and its SQLite, PostgreSQL and MongoDB
//!   implementations.
//! - [`cluster`]: several processes on one database: messages, room changes
//!   and presence over Redis (`cluster::link`), remote presence
//!   (`cluster::presence`); the Registry's side is `registry::cluster`.
//! - [`retention`]: the background purge of old messages.
//! - [`server`]: actix-web wiring (`/ws`, `/healthz`, `/metrics`) and start/stop.
//! - [`web`]: the browser client (`web/`, built into `web/dist/`), embedded and
//!   served at `/` with its Content-Security-Policy and cache headers.
//! - [`config`]: layered TOML + environment settings.
//! - [`client`]: the protocol-level client the tests, CLI and bench use, with
//!   `client::envelope` (one message's end-to-end crypto) and
//!   `client::display` (escaping what is shown).
//! - Small pieces: [`user`] (a user's parsed keys), [`password`] (Argon2id off
//!   the actor threads), [`peers`] (per-address connection and registration
//!   budgets), [`metrics`] (counters for `/metrics`), [`util`]
//!   (clock, ids, fixed-window counters), [`fuzzing`] (the fuzz targets' bodies).
//!
//! The binaries are in `src/bin/`: `e2ee-chat-server`, `e2ee-chat` (the
//! terminal client) and `e2ee-chat-bench` (the load generator).
//!
//! See ARCHITECTURE.md for how a message travels through them.

pub mod client;
pub mod cluster;
pub mod config;
pub mod crypto;
pub mod fuzzing;
pub mod handle;
pub mod metrics;
pub mod password;
pub mod peers;
pub mod protocol;
pub mod registry;
pub mod retention;
pub mod room;
pub mod server;
pub mod session;
pub mod store;
pub mod user;
pub mod util;
pub mod validate;
pub mod web;
