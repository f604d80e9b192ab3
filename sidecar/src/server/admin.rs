//! The admin port (15020): `/live` (always 200 while the process serves), `/ready` (503 until a
//! config is loaded and the listeners are up, and again while draining), `/metrics` (Prometheus
//! text), `/config` (the config in force, with its revision, as JSON) and `/load` (this pod's
//! models' load as it reports it to peers; from localhost also every endpoint's estimate) and
//! `/stats` (each variant's requests over the last minutes, for `kubectl infermesh stat`).
//!
//! Probes, metrics and stats answer anyone who reaches the port (the kubelet, Prometheus, the
//! operator, the API server's pod proxy). `/config` lists every endpoint of the namespace, pod names and IPs: it answers only
//! on localhost, that is from inside the pod (`kubectl exec`) or through `kubectl port-forward`.
//!
//! Once a config is loaded, every `/ready` answer carries the revision in force in an
//! `x-infermesh-revision` header: that is how the operator learns what each sidecar enforces. It
//! reads this port from outside the pod, so the sidecar needs no API rights of its own (it runs
//! under the pod's service account, shared with the model, which must not patch pods), and the
//! answer cannot be older than the proxy's routing table, since it is read from the same store.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use infermesh_admin::{LIVE_PATH, METRICS_PATH, READY_PATH, openmetrics_response};

use infermesh_crds::REVISION_HEADER;

use crate::config::store::ConfigStore;
use crate::load::orca;
use crate::metrics::window;
use crate::request::body::ResponseBody;
use crate::serving::LocalModels;

const CONFIG_PATH: &str = "/config";
const LOAD_PATH: &str = "/load";
const STATS_PATH: &str = "/stats";
/// The window `/stats` sums over when no `since` is given.
const DEFAULT_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

pub(crate) struct Admin {
    pub(crate) store: Arc<ConfigStore>,
    pub(crate) local: Arc<LocalModels>,
    pub(crate) listeners_up: AtomicBool,
    pub(crate) draining: AtomicBool,
}

impl Admin {
    pub(crate) async fn handle<B>(
        self: Arc<Self>,
        peer: IpAddr,
        req: Request<B>,
    ) -> Result<Response<ResponseBody>, Infallible> {
        Ok(self.answer(peer, req.method(), req.uri().path(), req.uri().query()))
    }

    fn answer(
        &self,
        peer: IpAddr,
        method: &Method,
        path: &str,
        query: Option<&str>,
    ) -> Response<ResponseBody> {
        if method != Method::GET && method != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        }
        match path {
            LIVE_PATH => text(StatusCode::OK, "live\n"),
            READY_PATH => {
                let mut r = if self.draining.load(Ordering::Acquire) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready: draining\n")
                } else if !self.store.is_loaded() {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: no mesh config loaded yet\n",
                    )
                } else if !self.listeners_up.load(Ordering::Acquire) {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: listeners not up\n",
                    )
                } else {
                    text(StatusCode::OK, "ready\n")
                };
                if self.store.is_loaded()
                    && let Ok(v) = HeaderValue::from_str(&self.store.current().revision)
                {
                    r.headers_mut().insert(REVISION_HEADER, v);
                }
                r
            }
            METRICS_PATH => openmetrics_response(self.store.metrics.encode()),
            CONFIG_PATH if !peer.is_loopback() => text(
                StatusCode::FORBIDDEN,
                "/config answers only on localhost: kubectl exec into the pod, or kubectl port-forward pod/NAME 15020\n",
            ),
            CONFIG_PATH => {
                let t = self.store.current();
                let body = serde_json::json!({
                    "revision": t.revision,
                    "loaded": self.store.is_loaded(),
                    "config": t.config,
                    "refused": t.refused,
                    "estimates": self.estimates(tokio::time::Instant::now()),
                });
                json(body)
            }
            LOAD_PATH => {
                let mut r = json(self.load(peer.is_loopback()));
                // `?service=NAME`: that model's report in the header peers read on responses.
                let asked =
                    query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("service=")));
                if let Some(name) = asked
                    && let Some(report) = self.local.report_of(name, tokio::time::Instant::now())
                    && let Ok(v) = HeaderValue::try_from(report.to_text())
                {
                    r.headers_mut().insert(orca::HEADER, v);
                }
                r
            }
            STATS_PATH => match since(query) {
                Ok(window) => json(self.stats(window)),
                Err(why) => text(StatusCode::BAD_REQUEST, why),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "unknown path: try /ready, /live, /metrics, /config, /load, /stats\n",
            ),
        }
    }

    /// This pod's models' reports (what peers read); with `estimates` (asked from inside the
    /// pod) also what this sidecar believes of every endpoint it routes to.
    fn load(&self, estimates: bool) -> serde_json::Value {
        let now = tokio::time::Instant::now();
        let models: serde_json::Map<String, serde_json::Value> = self
            .local
            .reports(now)
            .into_iter()
            .map(|(name, r, scraped)| {
                let engine = scraped.map(|s| {
                    serde_json::json!({
                        "engine": format!("{:?}", s.engine),
                        "ageMs": now.saturating_duration_since(s.at).as_millis() as u64,
                        "waiting": s.load.waiting,
                        "running": s.load.running,
                        "kvUsage": s.load.kv_usage,
                        "prefixHitRate": s.hit_rate.or(s.load.hit_rate_gauge),
                        "loraRunning": s.load.lora.as_ref().map(|l| &l.running),
                    })
                });
                let body = serde_json::json!({
                    "report": r.to_text(),
                    "inFlight": r.in_flight,
                    "promptTokens": r.prompt_tokens,
                    "engine": engine,
                });
                (name, body)
            })
            .collect();
        let mut out = serde_json::json!({ "models": models });
        if estimates {
            out["endpoints"] = self.estimates(now).into();
        }
        out
    }

    /// Each variant's requests as this sidecar routed them over the last `window` (what
    /// `kubectl infermesh stat` sums over pods): counts, failures, output tokens, TTFT and TPOT
    /// buckets. Aggregates only, no endpoint: it answers anyone, as `/metrics` does.
    fn stats(&self, window: std::time::Duration) -> serde_json::Value {
        let now = tokio::time::Instant::now();
        let t = self.store.current();
        let variants: Vec<serde_json::Value> = t
            .services
            .iter()
            .flat_map(|svc| {
                svc.variants.iter().map(move |v| {
                    let mut s = serde_json::json!(v.metrics.tokens.recent.summary(now, window));
                    s["service"] = svc.name.as_str().into();
                    s["variant"] = v.name.as_str().into();
                    s
                })
            })
            .collect();
        serde_json::json!({
            "revision": t.revision,
            "windowSeconds": window.clamp(window::SLOT, window::MAX_WINDOW).as_secs(),
            "variants": variants,
        })
    }

    /// What this sidecar believes of every endpoint it routes to, at `now`.
    fn estimates(&self, now: tokio::time::Instant) -> Vec<serde_json::Value> {
        let t = self.store.current();
        t.services
            .iter()
            .flat_map(|svc| {
                svc.variants.iter().flat_map(move |v| {
                    v.endpoints.iter().map(move |e| {
                        let own = e.state.in_flight();
                        let view = e.state.load.view(now, own);
                        serde_json::json!({
                            "service": svc.name,
                            "variant": v.name,
                            "address": e.address,
                            "inFlight": own,
                            "requests": view.requests,
                            "waiting": view.waiting,
                            "kvUsage": view.kv_usage,
                            "loraAdapters": view.adapters.keys().len(),
                            "loraSlots": view.adapters.slots,
                            "reportAgeMs": view.age.map(|a| a.as_millis() as u64),
                        })
                    })
                })
            })
            .collect()
    }
}

/// The `since` of a `/stats` query (`?since=5m`; Go-style durations as in the CRD), or why not.
fn since(query: Option<&str>) -> Result<std::time::Duration, String> {
    let Some(raw) = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("since=")))
    else {
        return Ok(DEFAULT_WINDOW);
    };
    match humantime::parse_duration(raw) {
        Ok(d) if d >= window::SLOT && d <= window::MAX_WINDOW => Ok(d),
        _ => Err(format!(
            "since={raw}: give a duration from {}s to {}s, e.g. since=1m\n",
            window::SLOT.as_secs(),
            window::MAX_WINDOW.as_secs()
        )),
    }
}

fn json(body: serde_json::Value) -> Response<ResponseBody> {
    let mut r = text(StatusCode::OK, body.to_string());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{endpoint::state::EwmaPolicy, metrics::Metrics};

    async fn ready(admin: &Arc<Admin>) -> Response<ResponseBody> {
        let req = Request::get(READY_PATH).body(()).unwrap();
        let local = IpAddr::from([127, 0, 0, 1]);
        admin.clone().handle(local, req).await.unwrap()
    }

    #[tokio::test]
    async fn ready_names_the_revision_in_force_once_a_config_is_loaded() {
        let store = Arc::new(ConfigStore::new(
            Arc::new(Metrics::new()),
            None,
            EwmaPolicy::default(),
        ));
        let admin = Arc::new(Admin {
            store: store.clone(),
            local: Default::default(),
            listeners_up: AtomicBool::new(true),
            draining: AtomicBool::new(false),
        });
        let r = ready(&admin).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.headers().get(REVISION_HEADER).is_none());

        let json = r#"{"revision":"00c0ffee00c0ffee","services":[]}"#;
        store.apply_json(json.as_bytes(), "test").unwrap();
        let r = ready(&admin).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[REVISION_HEADER], "00c0ffee00c0ffee");

        // Draining: not ready, but still telling what it enforces.
        admin.draining.store(true, Ordering::Release);
        let r = ready(&admin).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[REVISION_HEADER], "00c0ffee00c0ffee");
    }

    #[test]
    fn the_config_answers_only_on_localhost_and_probes_answer_anyone() {
        let admin = Admin {
            store: Arc::new(ConfigStore::new(
                Arc::new(Metrics::new()),
                None,
                EwmaPolicy::default(),
            )),
            local: Default::default(),
            listeners_up: AtomicBool::new(true),
            draining: AtomicBool::new(false),
        };
        let pod: IpAddr = "10.1.2.3".parse().unwrap();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let status = |peer, path| admin.answer(peer, &Method::GET, path, None).status();
        assert_eq!(status(pod, "/config"), StatusCode::FORBIDDEN);
        assert_eq!(status("::1".parse().unwrap(), "/config"), StatusCode::OK);
        assert_eq!(status(local, "/config"), StatusCode::OK);
        assert_eq!(status(pod, "/live"), StatusCode::OK);
        assert_eq!(status(pod, "/metrics"), StatusCode::OK);
        // Peers read a pod's load; the estimates of every endpoint stay inside the pod.
        assert_eq!(status(pod, "/load"), StatusCode::OK);
        assert!(admin.load(false).get("endpoints").is_none());
        assert!(admin.load(true)["endpoints"].is_array());
        // The stats of every variant answer anyone (the API server's pod proxy), over a window
        // the query bounds.
        assert_eq!(status(pod, "/stats"), StatusCode::OK);
        let stats = |q| admin.answer(pod, &Method::GET, "/stats", Some(q));
        assert_eq!(stats("since=5s").status(), StatusCode::BAD_REQUEST);
        assert_eq!(stats("since=1h").status(), StatusCode::BAD_REQUEST);
        assert_eq!(stats("since=soon").status(), StatusCode::BAD_REQUEST);
        assert_eq!(stats("since=2m").status(), StatusCode::OK);
        assert_eq!(
            admin.stats(std::time::Duration::from_secs(120))["windowSeconds"],
            120
        );
        // Not ready (no config yet), but answered.
        assert_eq!(status(pod, "/ready"), StatusCode::SERVICE_UNAVAILABLE);
    }
}
