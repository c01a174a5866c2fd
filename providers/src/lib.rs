//! Provider dialects and the canonical call view.
//!
//! Owns: the API surfaces the gateway serves ([`Surface`]), the wire dialects they belong to
//! ([`Dialect`]), the small canonical view a gate reads from a call ([`view::CallView`]), error
//! bodies in each dialect ([`dialect`]), what a call used as each dialect reports it ([`usage`]),
//! what tokens cost ([`prices`]), and the built-in deterministic `mock` provider ([`mock`]).
//! Must not touch: sockets, TLS, configuration files or policy; the gateway owns those.

pub mod anthropic;
pub mod canonical;
pub mod codec;
pub mod dialect;
pub mod error;
pub mod gemini;
pub mod mock;
pub mod ollama;
pub mod openai;
pub mod prices;
pub mod sse;
pub mod stream;
pub mod translate;
pub mod usage;
pub mod view;
pub mod whole;

pub use dialect::Dialect;
pub use view::{CallView, Surface, ViewError};
