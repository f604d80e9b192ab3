//! What every infermesh binary (operator, webhook, sidecar) shares about being a process that
//! Kubernetes runs: one probe convention, the OpenMetrics response, and the shutdown signals.
//!
//! The probe paths are the same on every binary, so manifests, the injected sidecar and the e2e
//! tests name them once: `/live` answers whether the process should be restarted, `/ready` whether
//! it should receive work, `/metrics` serves the Prometheus/OpenMetrics text.
#![forbid(unsafe_code)]

use http::{HeaderValue, Response, header};

/// Liveness: 200 while the process works; a failure here makes the kubelet restart it.
pub const LIVE_PATH: &str = "/live";
/// Readiness: 200 once the process should receive work, 503 (with the reason) otherwise.
pub const READY_PATH: &str = "/ready";
/// Prometheus scrape target, in the OpenMetrics text format.
pub const METRICS_PATH: &str = "/metrics";

/// The content type of prometheus-client's text encoding.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A 200 response carrying encoded metrics, with the OpenMetrics content type.
pub fn openmetrics_response<B: From<String>>(text: String) -> Response<B> {
    // `Response::new` answers 200.
    let mut r = Response::new(B::from(text));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE),
    );
    r
}

/// Which signal asked the process to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: what the kubelet sends at pod deletion.
    Terminate,
    /// SIGINT (Ctrl-C).
    Interrupt,
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Signal::Terminate => "SIGTERM",
            Signal::Interrupt => "SIGINT",
        })
    }
}

/// Resolves at the first SIGTERM or SIGINT and says which. Where the SIGTERM handler cannot be
/// installed it says so in the log and waits for SIGINT alone, rather than failing the start.
pub async fn shutdown_signal() -> Signal {
    let interrupt = async {
        // An error here means no handler could be installed: then nothing can stop us by signal,
        // and waiting forever is the only faithful answer.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => Signal::Terminate,
                () = interrupt => Signal::Interrupt,
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot install the SIGTERM handler; only SIGINT stops the process");
                interrupt.await;
                Signal::Interrupt
            }
        }
    }
    #[cfg(not(unix))]
    {
        interrupt.await;
        Signal::Interrupt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn metrics_are_served_with_the_openmetrics_content_type() {
        let r: Response<String> = openmetrics_response("# EOF\n".to_owned());
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        assert_eq!(r.body(), "# EOF\n");
    }

    #[test]
    fn the_probe_paths_are_distinct() {
        assert_ne!(LIVE_PATH, READY_PATH);
        assert_ne!(READY_PATH, METRICS_PATH);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn sigterm_resolves_the_shutdown_future() {
        let waiting = tokio::spawn(shutdown_signal());
        // Let the handler be installed before the signal is raised.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let pid = std::process::id().to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(killed.success());
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the signal arrives")
            .unwrap();
        assert_eq!(got, Signal::Terminate);
    }
}
