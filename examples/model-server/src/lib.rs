//! A sample inference model server for infermesh demos and tests: OpenAI-compatible
//! `/v1/completions` and `/v1/chat/completions` (whole or streamed as SSE), `/health`, and `/`
//! (version, pod, model). Tokens are generated deterministically from the prompt, no model
//! weights; latency and errors can be injected. Every answer carries `x-model-version`.

pub mod config;
pub mod openai;
pub mod server;
pub mod sse;
pub mod tokens;

pub use config::{Args, Config};
pub use server::{POD_HEADER, VERSION_HEADER, serve};
