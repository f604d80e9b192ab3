//! infermesh sidecar-injection webhook: the injection decision ([`inject`]), the admission
//! review handling around it ([`review`]), the HTTPS server ([`server`]) with its self-managed
//! certificates ([`certs`], [`tls`]), the namespace cache ([`namespaces`]) and [`metrics`].

pub mod app;
pub mod certs;
pub mod client;
pub mod inject;
pub mod metrics;
pub mod namespaces;
pub mod review;
pub mod server;
pub mod tls;

#[cfg(test)]
mod server_tests;
