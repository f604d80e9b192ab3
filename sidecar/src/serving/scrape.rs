//! Reading the local engines' metrics: every [`INTERVAL`] (jittered, so the pods of a pool do
//! not scrape in step), each service this pod serves (its endpoints include this pod, or peers
//! have delivered requests for it here) whose `engine` names metrics gets one GET
//! of its metrics path over the service's own loopback connections. A reading that fails
//! (unreachable, non-200, malformed, no load signal) is counted and logged at most once a
//! minute per service; the last good one ages out of the reports after
//! [`super::ENGINE_FRESH_FOR`], so a dead metrics endpoint falls back to the sidecar's counts.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use tokio::sync::watch;
use tokio::time::Instant;

use super::LocalModels;
use crate::config::store::ConfigStore;
use crate::config::table::Service;
use crate::hash::{ConfigMap, random_unit};
use crate::load::engine::{self, Engine};
use crate::load::parser_for;
use crate::upstream::body::RequestBody;

/// Mean time between two readings (the field's pickers scrape every 50-250 ms).
pub(crate) const INTERVAL: Duration = Duration::from_millis(200);
/// A reading slower than this is a failure: a loaded engine still answers /metrics at once.
const TIMEOUT: Duration = Duration::from_millis(500);
/// Largest metrics text read.
const MAX_TEXT: usize = 4 << 20;
/// Failures of one service are logged at most this often (they are all counted).
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Why a reading failed, as counted in `infermesh_engine_metrics_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    Unreachable,
    Status(StatusCode),
    Malformed,
    NoLoad,
    UnknownEngine,
}

impl Failure {
    fn label(self) -> &'static str {
        match self {
            Failure::Unreachable => "unreachable",
            Failure::Status(_) => "status",
            Failure::Malformed => "malformed",
            Failure::NoLoad => "no-load",
            Failure::UnknownEngine => "unknown-engine",
        }
    }
}

/// Reads the local engines until `stop` turns true.
pub(crate) async fn run(
    store: Arc<ConfigStore>,
    models: Arc<LocalModels>,
    mut stop: watch::Receiver<bool>,
) {
    let mut logged: ConfigMap<String, Instant> = ConfigMap::default();
    loop {
        // 0.75-1.25 × the interval.
        let pause = INTERVAL.mul_f64(0.75 + random_unit() / 2.0);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return,
        }
        let table = store.current();
        models.retain(|name| table.service(name).is_some());
        // Served here: this pod is an endpoint, or peers deliver to it.
        let here = |s: &&Arc<Service>| s.serves_locally || models.contains(&s.name);
        for svc in table.services.iter().filter(here) {
            let Some(configured) = svc.engine else {
                continue;
            };
            if configured == infermesh_crds::mesh::Engine::Generic {
                continue;
            }
            let result = read(svc, configured).await;
            match result {
                Ok((engine, load)) => {
                    models
                        .model(&svc.name)
                        .scraped_now(engine, load, Instant::now())
                }
                Err(why) => {
                    store.metrics.engine_metrics_error(&svc.name, why.label());
                    let now = Instant::now();
                    let due = logged
                        .get(&svc.name)
                        .is_none_or(|at| now.duration_since(*at) >= LOG_EVERY);
                    if due {
                        logged.insert(svc.name.clone(), now);
                        tracing::warn!(service = %svc.name, reason = ?why,
                            "cannot read the local model's metrics; balancing on the sidecar's own counts");
                    }
                }
            }
        }
    }
}

/// One reading of `svc`'s engine.
async fn read(
    svc: &Service,
    configured: infermesh_crds::mesh::Engine,
) -> Result<(Engine, engine::EngineLoad), Failure> {
    let req = Request::get(configured.metrics_path())
        .header(http::header::HOST, svc.local.authority().as_str())
        .body(RequestBody::replay(&Bytes::new(), &None))
        .map_err(|_| Failure::Unreachable)?;
    let read = async {
        let (resp, lent) = svc
            .local
            .send(req, TIMEOUT)
            .await
            .map_err(|_| Failure::Unreachable)?;
        if resp.status() != StatusCode::OK {
            return Err(Failure::Status(resp.status()));
        }
        let text = Limited::new(resp.into_body(), MAX_TEXT)
            .collect()
            .await
            .map_err(|_| Failure::Malformed)?
            .to_bytes();
        lent.release();
        Ok(text)
    };
    let text = tokio::time::timeout(TIMEOUT, read)
        .await
        .map_err(|_| Failure::Unreachable)??;
    let text = std::str::from_utf8(&text).map_err(|_| Failure::Malformed)?;
    let engine = parser_for(configured)
        .or_else(|| Engine::detect(text))
        .ok_or(Failure::UnknownEngine)?;
    let load = engine::parse(engine, text).map_err(|e| match e {
        engine::MetricsError::NoLoad => Failure::NoLoad,
        _ => Failure::Malformed,
    })?;
    Ok((engine, load))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metrics drop a service's series by the reasons they list: every reason counted here
    /// must be among them, or its series would outlive the service.
    #[test]
    fn every_failure_reason_is_one_the_metrics_remove() {
        let all = [
            Failure::Unreachable,
            Failure::Status(StatusCode::NOT_FOUND),
            Failure::Malformed,
            Failure::NoLoad,
            Failure::UnknownEngine,
        ];
        for f in all {
            assert!(
                crate::metrics::ENGINE_ERROR_REASONS.contains(&f.label()),
                "{f:?}"
            );
        }
        assert_eq!(crate::metrics::ENGINE_ERROR_REASONS.len(), all.len());
    }
}
