//! An LLM engine simulator for infermesh demos and tests, modelled on vLLM's V1 engine and
//! without model weights: an OpenAI-compatible API (`/v1/models`, `/v1/completions`,
//! `/v1/chat/completions`, whole or streamed as SSE), continuous batching with chunked prefill,
//! a paged KV cache with preemption, automatic prefix caching, LoRA adapters, and vLLM's
//! Prometheus metrics on `/metrics`. Step times follow a cost model; tokens are deterministic for
//! a given seed. Latency and errors can be injected; every answer carries `x-model-version`.

pub mod config;
pub mod engine;
pub mod lora;
pub mod metrics;
pub mod openai;
pub mod sampler;
pub mod server;
pub mod sse;
pub mod tokenizer;

pub use config::{Args, Config, EngineConfig, Mode, StepCost};
pub use server::{POD_HEADER, VERSION_HEADER, serve};
