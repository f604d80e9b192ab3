//! `infermesh-webhook`: the sidecar-injection admission webhook. See `--help` for the flags.

use clap::Parser;
use infermesh_webhook::app::{self, Args};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    // One process-wide provider, whatever else the dependency tree enables.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), listen = %args.listen, "infermesh-webhook starting");
    app::run(args, shutdown_signal()).await?;
    Ok(())
}

/// SIGTERM or SIGINT, logged: the server then stops accepting and drains in-flight reviews.
async fn shutdown_signal() {
    let signal = infermesh_admin::shutdown_signal().await;
    tracing::info!(%signal, "stopping");
}
