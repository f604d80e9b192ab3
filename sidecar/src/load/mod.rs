//! What a model server says about its load, and how sidecars tell each other: the engines'
//! Prometheus text read for queue, KV-cache and prefix-cache signals (`engine`), and the ORCA
//! text form a serving sidecar puts on its responses (`orca`), with the LoRA adapters an engine
//! holds (`adapters`). Pure parsing, no I/O: a leaf
//! below everything that uses it.

pub(crate) mod adapters;
pub(crate) mod engine;
pub(crate) mod orca;

use infermesh_crds::mesh;

use self::engine::Engine;

/// The parser for a configured engine: `None` for `Generic` (no metrics) and for `Auto`, which
/// is told from the first scrape ([`Engine::detect`]).
pub(crate) fn parser_for(e: mesh::Engine) -> Option<Engine> {
    match e {
        mesh::Engine::Vllm => Some(Engine::Vllm),
        mesh::Engine::Sglang => Some(Engine::Sglang),
        mesh::Engine::LlamaCpp => Some(Engine::LlamaCpp),
        mesh::Engine::TrtLlm => Some(Engine::TrtLlm),
        mesh::Engine::Auto | mesh::Engine::Generic => None,
    }
}
