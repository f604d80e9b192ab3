//! infermesh sidecar-injection webhook: the injection decision ([`inject`]), the admission
//! review handling around it, and the HTTPS server with its self-managed certificates.

pub mod inject;
