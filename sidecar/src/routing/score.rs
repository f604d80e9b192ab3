//! The `InferenceAware` choice among candidate endpoints, given what is known of each: its load
//! ([`LoadView`]) and how much of the prompt it likely holds (0..=1). Saturated endpoints (too
//! many requests waiting at the engine, or a nearly full KV cache) are passed over while others
//! remain; then each gets a weighted sum of scores in 0..=1, as the llm-d router's scorers:
//! fewer requests than the busiest candidate, free KV cache, prefix held, and for a request
//! whose model is a LoRA adapter some candidate's engine holds, the adapter held (or room to
//! load it). The best
//! wins; among near-ties two are drawn and the less loaded wins, so many sidecars with the same
//! view do not all send their next request to one endpoint.

use infermesh_crds::mesh::InferenceScoring;

use crate::endpoint::load::LoadView;
use crate::hash::random_below;

/// Scores this close to the best count as ties.
const NEAR: f64 = 0.02;

/// The weights and thresholds, as the scorer uses them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scoring {
    queue: f64,
    kv: f64,
    pub(crate) prefix: f64,
    pub(crate) lora: f64,
    max_waiting: f64,
    max_kv: f64,
}

impl From<InferenceScoring> for Scoring {
    fn from(s: InferenceScoring) -> Self {
        Self {
            queue: f64::from(s.queue_weight),
            kv: f64::from(s.kv_cache_weight),
            prefix: f64::from(s.prefix_weight),
            lora: f64::from(s.lora_weight),
            max_waiting: f64::from(s.max_queue),
            max_kv: f64::from(s.max_kv_cache_percent) / 100.0,
        }
    }
}

/// One candidate's score and its parts, each in 0..=1 (what the debug header shows), in
/// thousandths: a request's future carries its choice's score while it waits for the response.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Score {
    total: u16,
    queue: u16,
    kv: u16,
    prefix: u16,
    /// Scored only for a request for an adapter some candidate holds.
    lora: Option<u16>,
    /// Saturated: chosen only because every candidate was.
    pub(crate) saturated: bool,
}

fn milli(x: f64) -> u16 {
    (x.clamp(0.0, 1.0) * 1000.0).round() as u16
}

impl Score {
    pub(crate) fn total(&self) -> f64 {
        f64::from(self.total) / 1000.0
    }
    pub(crate) fn queue(&self) -> f64 {
        f64::from(self.queue) / 1000.0
    }
    pub(crate) fn kv(&self) -> f64 {
        f64::from(self.kv) / 1000.0
    }
    pub(crate) fn prefix(&self) -> f64 {
        f64::from(self.prefix) / 1000.0
    }
    pub(crate) fn lora(&self) -> Option<f64> {
        self.lora.map(|l| f64::from(l) / 1000.0)
    }
}

/// An endpoint whose engine can load the adapter without evicting another is better than one
/// that cannot, and worse than one that holds it (the llm-d router's LoRA affinity scorer
/// likewise ranks "active" above "room to load").
const LORA_ROOM: f64 = 0.5;

fn lora_score(v: &LoadView, model: u64) -> f64 {
    if v.adapters.holds(model) {
        1.0
    } else if v.adapters.has_room() == Some(true) {
        LORA_ROOM
    } else {
        0.0
    }
}

impl Scoring {
    fn saturated(&self, v: &LoadView) -> bool {
        v.waiting.is_some_and(|w| w > self.max_waiting)
            || v.kv_usage.is_some_and(|k| k > self.max_kv)
    }

    /// The position in `loads` (and `prefix`, the same length) of the endpoint to use, and its
    /// score; `None` only when there is no candidate. `model` is the key of the request's
    /// model (`adapters::model_key`), if it names one.
    pub(crate) fn choose(
        &self,
        loads: &[LoadView],
        prefix: &[f64],
        model: Option<u64>,
    ) -> Option<(usize, Score)> {
        let all_saturated = loads.iter().all(|v| self.saturated(v));
        let kept = |j: &usize| all_saturated || !self.saturated(&loads[*j]);
        // Adapter affinity counts only when the model is an adapter some candidate holds: a
        // base model, or an adapter no engine has yet, is not steered by free adapter slots.
        let adapter = model.filter(|&m| {
            self.lora > 0.0
                && (0..loads.len())
                    .filter(kept)
                    .any(|j| loads[j].adapters.holds(m))
        });
        let busiest = (0..loads.len())
            .filter(kept)
            .map(|j| loads[j].requests)
            .fold(0.0, f64::max);
        let lora_weight = if adapter.is_some() { self.lora } else { 0.0 };
        let weights = (self.queue + self.kv + self.prefix + lora_weight).max(f64::MIN_POSITIVE);
        let score = |j: usize| {
            let v = &loads[j];
            let queue = if busiest > 0.0 {
                1.0 - v.requests / busiest
            } else {
                1.0
            };
            let kv = 1.0 - v.kv_usage.unwrap_or(0.0);
            let p = prefix.get(j).copied().unwrap_or(0.0);
            let lora = adapter.map(|m| lora_score(v, m));
            let total = (self.queue * queue
                + self.kv * kv
                + self.prefix * p
                + lora_weight * lora.unwrap_or(0.0))
                / weights;
            (
                total,
                Score {
                    total: milli(total),
                    queue: milli(queue),
                    kv: milli(kv),
                    prefix: milli(p),
                    lora: lora.map(milli),
                    saturated: all_saturated,
                },
            )
        };
        let scores: Vec<(usize, f64, Score)> = (0..loads.len())
            .filter(kept)
            .map(|j| {
                let (t, s) = score(j);
                (j, t, s)
            })
            .collect();
        let best = scores.iter().map(|x| x.1).fold(f64::MIN, f64::max);
        let near: Vec<(usize, Score)> = scores
            .iter()
            .filter(|x| x.1 >= best - NEAR)
            .map(|x| (x.0, x.2))
            .collect();
        match near.len() {
            0 => None,
            1 => Some(near[0]),
            n => {
                // Two distinct near-ties drawn uniformly; the one with fewer requests wins.
                let ia = random_below(n);
                let ib = (ia + 1 + random_below(n - 1)) % n;
                let (a, b) = (near[ia], near[ib]);
                Some(if loads[b.0].requests < loads[a.0].requests {
                    b
                } else {
                    a
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::adapters::{Adapters, model_key};

    fn load(requests: f64, waiting: Option<f64>, kv: Option<f64>) -> LoadView {
        LoadView {
            requests,
            waiting,
            kv_usage: kv,
            adapters: Adapters::default(),
            age: None,
        }
    }

    fn holding(names: &[&str], slots: u32) -> LoadView {
        LoadView {
            adapters: Adapters::of(names.iter().copied(), Some(slots)),
            ..load(2.0, Some(0.0), Some(0.3))
        }
    }

    fn scoring() -> Scoring {
        InferenceScoring::default().into()
    }

    #[test]
    fn the_less_loaded_endpoint_wins_without_a_prefix() {
        let loads = [
            load(8.0, Some(0.0), Some(0.3)),
            load(2.0, Some(0.0), Some(0.3)),
        ];
        let (j, s) = scoring().choose(&loads, &[0.0, 0.0], None).unwrap();
        assert_eq!(j, 1);
        assert_eq!(s.queue(), 0.75, "{s:?}");
    }

    #[test]
    fn a_held_prefix_outweighs_a_little_more_load() {
        let loads = [
            load(3.0, Some(0.0), Some(0.4)),
            load(2.0, Some(0.0), Some(0.4)),
        ];
        let (j, s) = scoring().choose(&loads, &[0.9, 0.0], None).unwrap();
        assert_eq!(j, 0, "{s:?}");
        assert_eq!(s.prefix(), 0.9);
    }

    #[test]
    fn saturated_endpoints_are_passed_over_unless_all_are() {
        let s = scoring();
        // The prefix holder is saturated: its queue is over 5, or its KV cache over 80 %.
        for full in [
            load(1.0, Some(6.0), Some(0.1)),
            load(1.0, Some(0.0), Some(0.85)),
        ] {
            let loads = [full, load(9.0, Some(0.0), Some(0.5))];
            let (j, sc) = s.choose(&loads, &[1.0, 0.0], None).unwrap();
            assert_eq!(j, 1);
            assert!(!sc.saturated);
        }
        let loads = [load(1.0, Some(9.0), None), load(2.0, Some(7.0), None)];
        let (_, sc) = s.choose(&loads, &[0.0, 0.0], None).unwrap();
        assert!(sc.saturated);
    }

    #[test]
    fn near_ties_are_shared_not_herded() {
        let loads = [load(0.0, None, None); 4];
        let mut picks = [0u32; 4];
        for _ in 0..4000 {
            picks[scoring().choose(&loads, &[0.0; 4], None).unwrap().0] += 1;
        }
        assert!(picks.iter().all(|p| (800..1200).contains(p)), "{picks:?}");
        assert_eq!(scoring().choose(&[], &[], None), None);
    }

    #[test]
    fn an_adapter_goes_where_it_is_held_then_where_there_is_room() {
        let s = scoring();
        let sql = Some(model_key("sql-lora"));
        // The holder has one more request, and still wins.
        let loads = [
            holding(&["chat-lora"], 2),
            LoadView {
                requests: 3.0,
                ..holding(&["sql-lora"], 2)
            },
            holding(&["a", "b"], 2),
        ];
        let (j, sc) = s.choose(&loads, &[0.0; 3], sql).unwrap();
        assert_eq!((j, sc.lora()), (1, Some(1.0)), "{sc:?}");
        // With the holder busier, room to load beats a full engine.
        let busy = LoadView {
            requests: 6.0,
            ..loads[1]
        };
        let (j, sc) = s
            .choose(&[loads[2], loads[0], busy], &[0.0; 3], sql)
            .unwrap();
        assert_eq!((j, sc.lora()), (1, Some(LORA_ROOM)), "{sc:?}");
        // A model no candidate holds (a base model) is not scored for adapters: load decides.
        let (j, sc) = s
            .choose(&loads, &[0.0; 3], Some(model_key("base")))
            .unwrap();
        assert_ne!(j, 1, "the most loaded loses");
        assert_eq!(sc.lora(), None);
        // A saturated holder is passed over like any saturated endpoint.
        let full = LoadView {
            waiting: Some(9.0),
            ..loads[1]
        };
        let (j, _) = s.choose(&[loads[0], full], &[0.0; 2], sql).unwrap();
        assert_eq!(j, 0);
    }
}
