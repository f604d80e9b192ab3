//! The mesh config in force: where documents come from (`source`: a file or the ConfigMap), how
//! one is validated and compiled (`compile`) into the immutable routing table the request path
//! reads (`table`), and the store that swaps tables atomically and keeps the last good one
//! (`store`).
//!
//! Above `routing`, `endpoint` and `upstream`, whose types a compiled table is made of; below
//! `request`, which reads it.

pub(crate) mod compile;
pub(crate) mod source;
pub(crate) mod store;
pub(crate) mod table;
