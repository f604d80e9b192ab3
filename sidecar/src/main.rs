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

/// `mi_option_purge_delay` in mimalloc v2's `mimalloc.h` (the `mi_option_e` enum; the Rust
/// bindings name only some of its members).
#[cfg(feature = "mimalloc")]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Pages mimalloc no longer uses go back to the OS after 1 ms rather than its default 10: a
/// sidecar's memory counts in every pod, and under h2load's 640 streams this lowers the sidecar's
/// peak RSS by ~0.6 MB with throughput unchanged (`make bench`). `MIMALLOC_PURGE_DELAY` still
/// overrides it.
#[cfg(feature = "mimalloc")]
#[allow(unsafe_code)]
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain integer option; mimalloc reads it on its next purge.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 1) }
    }
}

/// mimalloc carries out a delayed purge only when the heap is next used: a sidecar that goes idle
/// after a burst would keep the burst's pages. So each worker thread, as it parks (runs out of
/// work), collects its heap, at most once a second: the expired purges happen then. A one-second
/// tick (`run`) makes sure an idle runtime still parks, and so collects, now and then.
#[cfg(feature = "mimalloc")]
#[allow(unsafe_code)]
fn collect_when_idle() {
    use std::cell::Cell;
    use std::time::{Duration, Instant};
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    LAST.with(|last| {
        if last
            .get()
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            last.set(Some(now));
            // SAFETY: collects the calling thread's heap; no pointer is passed.
            unsafe { libmimalloc_sys::mi_collect(false) }
        }
    });
}

fn main() -> anyhow::Result<()> {
    #[cfg(feature = "mimalloc")]
    tune_allocator();
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
    #[cfg(feature = "mimalloc")]
    rt.on_thread_park(collect_when_idle);
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
    #[cfg(feature = "mimalloc")]
    tokio::spawn(async {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            collect_when_idle();
        }
    });
    let signal = infermesh_admin::shutdown_signal().await;
    tracing::info!(%signal, "draining");
    let drained = sidecar.shutdown(drain).await;
    tracing::info!(drained, "stopped");
    Ok(())
}

#[cfg(all(test, feature = "mimalloc"))]
mod tests {
    use super::*;

    #[test]
    #[allow(unsafe_code)]
    fn the_purge_delay_is_set_to_one_millisecond() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads and sets a plain integer option.
        let get = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        // mimalloc's documented default for purge_delay: the index names that option.
        assert_eq!(get(), 10);
        tune_allocator();
        assert_eq!(get(), 1);
    }
}
