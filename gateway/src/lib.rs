//! `lattice-gateway`: the listeners, the gate pipeline and the CLI of the `lattice` binary.
//!
//! Map: [`config`] (TOML, interpolation, validation; each section's types owned by its module) -> [`server`] (listeners, TLS, HTTP/1.1
//! and HTTP/2) -> [`proxy`] (the per-request path) -> [`gates`] (THE ordered list of gates)
//! -> [`router`] / [`upstream`] (Execute). [`body`] carries responses and the access record;
//! [`certs`] writes development certificates.

pub mod body;
pub mod budget;
pub mod certs;
pub mod client;
pub mod config;
pub mod content;
pub mod framing;
pub mod gates;
pub mod hex;
pub mod identity;
pub mod pattern;
pub mod policy;
pub mod proxy;
pub mod router;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod watch;
pub mod witness;

pub use config::Config;
pub use server::Server;
