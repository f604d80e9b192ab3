//! A small HTTP client and load tool for infermesh demos and tests: `get` one URL, `load` it
//! with N requests at concurrency C (counting answers by `x-model-version` and status), or
//! `stream` its server-sent events as they arrive.

pub mod cli;
pub mod load;
pub mod stream;
pub mod transport;
