//! `infermesh-model-server` entry point: parse flags, listen, serve until SIGTERM or Ctrl-C.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use infermesh_model_server::{Args, Config, serve};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("infermesh-model-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let pod = std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".to_owned());
    let config = Config::from_args(&args, pod).context("invalid flags")?;
    let addr = std::net::SocketAddr::new(args.address, args.port);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr}: is the port free? choose another with --port")
    })?;
    let addr = listener.local_addr().unwrap_or(addr);
    // Install the signal handlers before announcing the address: a SIGTERM sent as soon as the
    // server is reachable must drain it, not kill it.
    let mut shutdown = Box::pin(shutdown_signal());
    tokio::select! {
        biased;
        () = &mut shutdown => return Ok(()),
        () = std::future::ready(()) => {}
    }
    tracing::info!(
        %addr,
        version = %config.version,
        model = %config.model,
        pod = %config.pod,
        pacing = if config.engine.cost.base.is_zero()
            && config.engine.cost.prefill_per_token.is_zero()
            && config.engine.cost.decode_per_seq.is_zero()
        {
            "token-interval"
        } else {
            "cost-model"
        },
        max_num_seqs = config.engine.max_num_seqs,
        kv_blocks = config.engine.kv_blocks,
        loras = ?config.engine.loras,
        "infermesh-model-server listening"
    );
    serve(listener, config, shutdown).await;
    Ok(())
}

/// Completes on SIGTERM (how Kubernetes stops a container) or Ctrl-C.
async fn shutdown_signal() {
    let signal = infermesh_admin::shutdown_signal().await;
    tracing::info!(%signal, "stopping");
}
