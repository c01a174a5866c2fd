//! Helpers for the whole-gateway integration tests (`tests/tests/*.rs`): an in-process mock
//! upstream written here, gateways started on free loopback ports, HTTP/1.1 and HTTP/2 clients
//! with optional client certificates.
