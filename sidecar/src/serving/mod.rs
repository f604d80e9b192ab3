//! This pod's own models and their load ([`LocalModels`]): what the sidecar next to a model
//! knows and reports to the sidecars that route to it. Two sources: its own count of the
//! requests it is handing to the model (exact and immediate: every caller's request comes
//! through it), and the engine's metrics, read over loopback every ~200 ms (`scrape`). A
//! report (`endpoint-load-metrics`, see `crate::load::orca`) is built from both on each
//! response to a peer; without fresh metrics (none configured, the engine's endpoint dead or
//! its text malformed) it carries the counts alone.
//!
//! Above `config` (the scrape follows the services in force), below `request` (which enters
//! each local delivery here and puts the report on its response).

pub(crate) mod scrape;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::hash::ConfigMap;
use crate::load::adapters::Adapters;
use crate::load::engine::{Engine, EngineLoad};
use crate::load::orca::LoadReport;

/// How long a scrape stands for the engine's state: a few scrape intervals. After it, reports
/// carry the sidecar's own counts only.
pub(crate) const ENGINE_FRESH_FOR: Duration = Duration::from_secs(1);

/// Bytes of prompt per token, for the in-flight prompt estimate of engines without metrics
/// (about 4 for English text with the usual tokenizers).
const BYTES_PER_TOKEN: u64 = 4;

/// The local models, by service name.
#[derive(Debug, Default)]
pub(crate) struct LocalModels {
    models: Mutex<ConfigMap<String, Arc<LocalModel>>>,
}

/// One service's model in this pod.
#[derive(Debug, Default)]
pub(crate) struct LocalModel {
    in_flight: AtomicU32,
    prompt_bytes: AtomicU64,
    engine: Mutex<Option<Scraped>>,
}

/// The last good reading of the engine's metrics.
#[derive(Clone, Debug)]
pub(crate) struct Scraped {
    pub(crate) engine: Engine,
    pub(crate) load: EngineLoad,
    /// Prefix-cache hit rate since the reading before.
    pub(crate) hit_rate: Option<f64>,
    pub(crate) at: Instant,
}

/// A request being handed to the local model; counted until dropped (its response streamed).
#[derive(Debug)]
pub(crate) struct Serving {
    model: Arc<LocalModel>,
    bytes: u64,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.model.in_flight.fetch_sub(1, Relaxed);
        self.model.prompt_bytes.fetch_sub(self.bytes, Relaxed);
    }
}

impl LocalModels {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConfigMap<String, Arc<LocalModel>>> {
        self.models.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The model of `service`, made on first use.
    pub(crate) fn model(&self, service: &str) -> Arc<LocalModel> {
        let mut m = self.lock();
        if let Some(model) = m.get(service) {
            return model.clone();
        }
        let model = Arc::new(LocalModel::default());
        m.insert(service.to_owned(), model.clone());
        model
    }

    /// A request of `bytes` (its declared body length) goes to the model of `service`.
    pub(crate) fn enter(&self, service: &str, bytes: u64) -> Serving {
        let model = self.model(service);
        model.in_flight.fetch_add(1, Relaxed);
        model.prompt_bytes.fetch_add(bytes, Relaxed);
        Serving { model, bytes }
    }

    /// Whether `service` has a model here (a request was delivered to it).
    pub(crate) fn contains(&self, service: &str) -> bool {
        self.lock().contains_key(service)
    }

    /// Forgets the models of services this pod no longer serves (nothing in flight there).
    pub(crate) fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.lock()
            .retain(|name, m| keep(name) || m.in_flight.load(Relaxed) > 0);
    }

    /// The report of `service`'s model at `now`, if it has one here.
    pub(crate) fn report_of(&self, service: &str, now: Instant) -> Option<LoadReport> {
        let model = self.lock().get(service).cloned()?;
        Some(model.report(now))
    }

    /// Every model's report at `now`, by service name (for `/load`).
    pub(crate) fn reports(&self, now: Instant) -> Vec<(String, LoadReport, Option<Scraped>)> {
        let mut out: Vec<_> = self
            .lock()
            .iter()
            .map(|(name, m)| (name.clone(), m.report(now), m.scraped()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

impl LocalModel {
    /// What this pod reports about the model at `now`.
    pub(crate) fn report(&self, now: Instant) -> LoadReport {
        let mut r = LoadReport {
            in_flight: Some(f64::from(self.in_flight.load(Relaxed))),
            prompt_tokens: Some((self.prompt_bytes.load(Relaxed) / BYTES_PER_TOKEN) as f64),
            ..Default::default()
        };
        let scraped = self.engine.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = scraped
            .as_ref()
            .filter(|s| now.saturating_duration_since(s.at) < ENGINE_FRESH_FOR)
        {
            r.waiting = s.load.waiting;
            r.running = s.load.running;
            r.kv_usage = s.load.kv_usage;
            r.prefix_hit_rate = s.hit_rate.or(s.load.hit_rate_gauge);
            if let Some(l) = &s.load.lora {
                // Waiting adapters count as held: the engine is loading them for a request.
                let names = l.running.iter().chain(&l.waiting).map(String::as_str);
                r.adapters = Adapters::of(names, l.max);
            }
        }
        r
    }

    fn scraped(&self) -> Option<Scraped> {
        self.engine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A new reading of the engine; the hit rate is taken against the one before.
    pub(crate) fn scraped_now(&self, engine: Engine, load: EngineLoad, at: Instant) {
        let mut s = self.engine.lock().unwrap_or_else(|e| e.into_inner());
        let hit_rate = s
            .as_ref()
            .filter(|prev| prev.engine == engine)
            .and_then(|prev| crate::load::engine::hit_rate(&prev.load, &load))
            .or_else(|| s.as_ref().and_then(|p| p.hit_rate));
        *s = Some(Scraped {
            engine,
            load,
            hit_rate,
            at,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::adapters::model_key;
    use crate::load::engine::LoraInfo;

    #[tokio::test(start_paused = true)]
    async fn a_report_counts_what_is_in_flight_and_the_fresh_engine_reading() {
        let models = LocalModels::default();
        let a = models.enter("llm", 4000);
        let b = models.enter("llm", 400);
        let now = Instant::now();
        let r = models.model("llm").report(now);
        assert_eq!(
            (r.in_flight, r.prompt_tokens, r.kv_usage),
            (Some(2.0), Some(1100.0), None)
        );
        drop(a);
        let load = EngineLoad {
            waiting: Some(3.0),
            running: Some(1.0),
            kv_usage: Some(0.5),
            prefix_queries: Some(100.0),
            prefix_hits: Some(10.0),
            lora: Some(LoraInfo {
                running: vec!["sql-lora".into()],
                waiting: vec!["chat-lora".into()],
                max: Some(2),
            }),
            ..Default::default()
        };
        let m = models.model("llm");
        m.scraped_now(Engine::Vllm, load.clone(), now);
        let later = EngineLoad {
            prefix_queries: Some(200.0),
            prefix_hits: Some(70.0),
            ..load
        };
        m.scraped_now(Engine::Vllm, later, now);
        let r = m.report(now);
        assert_eq!(
            (r.in_flight, r.waiting, r.kv_usage),
            (Some(1.0), Some(3.0), Some(0.5))
        );
        assert_eq!(r.prefix_hit_rate, Some(0.6));
        assert!(
            r.adapters.holds(model_key("sql-lora")) && r.adapters.holds(model_key("chat-lora"))
        );
        assert_eq!(r.adapters.has_room(), Some(false));
        // A reading too old is left out: the counts alone.
        let r = m.report(now + ENGINE_FRESH_FOR);
        assert_eq!(
            (r.in_flight, r.waiting, r.kv_usage, r.adapters),
            (Some(1.0), None, None, Adapters::default())
        );
        drop(b);
        models.retain(|_| false);
        assert!(models.reports(now).is_empty());
    }
}
