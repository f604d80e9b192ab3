//! `infermesh-sidecar`: parses flags, starts the sidecar, and drains on SIGTERM/SIGINT.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use infermesh_sidecar::Options;

// The default `mimalloc` feature: musl's malloc (the images are static musl builds) is slow;
// mimalloc keeps per-thread free lists (see sidecar/Cargo.toml).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // One TLS provider for the Kubernetes client, whatever else the build pulls in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let opts = Options::parse();
    let mut rt = if opts.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if opts.workers > 1 {
            b.worker_threads(opts.workers);
        }
        b
    };
    let rt = rt
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    rt.block_on(run(opts))
}

async fn run(opts: Options) -> anyhow::Result<()> {
    let drain = opts.drain_timeout;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        "infermesh-sidecar starting"
    );
    let sidecar = infermesh_sidecar::start(opts).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
    }
    let drained = sidecar.shutdown(drain).await;
    tracing::info!(drained, "stopped");
    Ok(())
}
