//! Admin HTTP server on the probe convention every infermesh binary shares (`infermesh-admin`):
//! `/live` (the process is working: 503 once the controller or the lease loop failed), `/ready`
//! (startup checks passed; the body says leader or standby), `/metrics` (OpenMetrics text).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Router, body::Body, extract::State, http::StatusCode, response::IntoResponse, routing::get,
};
use infermesh_admin::{LIVE_PATH, METRICS_PATH, READY_PATH, openmetrics_response};

use crate::metrics::Metrics;

/// What the probes report, set by `main` as the operator starts, leads and stops.
#[derive(Default)]
pub struct Health {
    /// The CRD is installed and the API answered.
    pub started: AtomicBool,
    /// This replica holds the lease and runs the controller.
    pub leading: AtomicBool,
    /// Set when the controller or the lease loop failed: the process should be restarted.
    pub failed: AtomicBool,
}

#[derive(Clone)]
struct AdminState {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

pub fn router(health: Arc<Health>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(LIVE_PATH, get(live))
        .route(READY_PATH, get(ready))
        .route(METRICS_PATH, get(metrics_text))
        .with_state(AdminState { health, metrics })
}

async fn live(State(s): State<AdminState>) -> impl IntoResponse {
    if s.health.failed.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "controller stopped\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn ready(State(s): State<AdminState>) -> impl IntoResponse {
    let h = &s.health;
    if h.failed.load(Ordering::Relaxed) || !h.started.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: starting or stopped\n",
        );
    }
    if h.leading.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready: leader\n")
    } else {
        (StatusCode::OK, "ready: standby\n")
    }
}

async fn metrics_text(State(s): State<AdminState>) -> impl IntoResponse {
    openmetrics_response::<Body>(s.metrics.render())
}

/// Serves the admin router on `addr` until the process exits.
pub async fn serve(addr: SocketAddr, router: Router) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "admin server listening");
    axum::serve(listener, router).await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get_text(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let code = out[9..12].parse().unwrap();
        (code, out)
    }

    #[tokio::test]
    async fn probes_follow_health_and_metrics_are_served() {
        let health = Arc::new(Health::default());
        let metrics = Arc::new(Metrics::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(health.clone(), metrics.clone());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        assert_eq!(get_text(addr, READY_PATH).await.0, 503);
        assert_eq!(get_text(addr, LIVE_PATH).await.0, 200);
        health.started.store(true, Ordering::Relaxed);
        let (code, body) = get_text(addr, READY_PATH).await;
        assert_eq!(code, 200);
        assert!(body.contains("standby"));
        health.failed.store(true, Ordering::Relaxed);
        assert_eq!(get_text(addr, LIVE_PATH).await.0, 503);
        let (code, body) = get_text(addr, METRICS_PATH).await;
        assert_eq!(code, 200);
        assert!(body.contains("infermesh_operator_reconciles_total"));
        assert!(body.contains("application/openmetrics-text"), "{body}");
        server.abort();
    }
}
