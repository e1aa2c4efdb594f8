//! e2ee-chat: a group chat server that stores and relays end-to-end
//! encrypted messages it cannot read, and the client library that speaks its
//! protocol (`docs/PROTOCOL.md`).
//!
//! One module per concern; the code map (what each file owns, what imports
//! what, who owns which state) is ARCHITECTURE.md's, the one place it is
//! kept. Where to start: [`server`] wires the actors ([`session`] per
//! websocket, [`registry`] for accounts and the directory, [`room`] per
//! room) to the [`store`]; [`protocol`] is the wire format; [`client`] is
//! the library the tests, the terminal client and the bench use. The
//! binaries are in `src/bin/`.

pub mod client;
pub mod cluster;
pub mod config;
pub mod crypto;
pub mod fuzzing;
pub mod handle;
pub mod identity;
pub mod message;
pub mod metrics;
pub mod mls;
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
