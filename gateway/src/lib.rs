//! `lattice-gateway`: the listeners, the gate pipeline and the CLI of the `lattice` binary.
//!
//! Map: [`config`] (TOML, interpolation, validation) -> [`server`] (listeners, TLS, HTTP/1.1
//! and HTTP/2) -> [`proxy`] (which endpoint; [`state`] is what every request reads, [`request`]
//! its ids and body, `reply` the one table of rejections) -> `llm` (a model call: intake ->
//! decide -> plan -> attempt -> respond) -> [`gates`] (THE ordered list of gates) -> [`router`]
//! / [`upstream`] (where a call goes). [`body`] carries responses through the response stages
//! and writes the access record. Wire formats live in `lattice_providers`, not here.
//!
//! Layering: no module imports one that imports it back (`tests/layering.rs` checks); each
//! store owns its config section's types ([`identity`], [`budget`], [`content`], [`policy`]).

pub(crate) mod admin;
pub mod body;
pub mod budget;
pub mod certs;
pub mod client;
pub mod config;
pub mod content;
pub mod failover;
pub mod framing;
pub mod gates;
pub mod hex;
pub mod identity;
pub(crate) mod llm;
pub(crate) mod models;
pub mod pattern;
pub mod policy;
pub mod proxy;
pub(crate) mod reply;
pub mod request;
pub mod router;
pub mod server;
pub(crate) mod sessions;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod translation;
pub mod upstream;
pub mod watch;
pub mod witness;

pub use config::Config;
pub use server::Server;
