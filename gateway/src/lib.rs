//! `lattice-gateway`: the listeners, the gate pipeline and the CLI of the `lattice` binary.
//!
//! Map: [`config`] (TOML, interpolation, validation) -> [`server`] (listeners, TLS, HTTP/1.1
//! and HTTP/2) -> [`proxy`] (the per-request path) -> [`gates`] (THE ordered list of gates)
//! -> [`router`] / [`upstream`] (Execute). [`body`] carries responses and the access record;
//! [`certs`] writes development certificates.

pub mod body;
pub mod budget;
pub mod certs;
pub mod config;
pub mod content;
pub mod framing;
pub mod gates;
pub mod hex;
pub mod jwt;
pub mod jwt_crypto;
pub mod keys;
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
