//! Choosing a variant ([`Router`]): explicit routes (header exact/prefix/regex and path prefix)
//! first, then a sticky cohort (a stable hash of a header picks the variant in proportion to the
//! weights), then smooth weighted round robin, which is exact: every window of `sum(weights)`
//! consecutive requests holds each variant exactly `weight` times.

use std::sync::atomic::AtomicUsize;

use http::HeaderMap;
use http::header::HeaderName;
use regex::Regex;

use super::next;
use crate::hash::stable_hash;

/// A service's variant choice: its routes, its sticky header and its weighted schedule.
#[derive(Debug)]
pub(crate) struct Router {
    pub(crate) routes: Vec<Route>,
    pub(crate) sticky_header: Option<HeaderName>,
    schedule: Schedule,
}

impl Router {
    pub(crate) fn new(
        routes: Vec<Route>,
        sticky_header: Option<HeaderName>,
        weights: &[u32],
    ) -> Self {
        Self {
            routes,
            sticky_header,
            schedule: Schedule::new(weights),
        }
    }

    /// The variant for a request: routes first, then the sticky header, then the weighted
    /// schedule; `None` when no variant may serve it.
    pub(crate) fn select(
        &self,
        path: &str,
        headers: &HeaderMap,
        model: Option<&str>,
    ) -> Option<usize> {
        for r in &self.routes {
            if r.matches(path, headers, model) {
                return Some(r.variant);
            }
        }
        if let Some(h) = &self.sticky_header
            && let Some(v) = headers.get(h)
        {
            return self.schedule.pick_by_hash(stable_hash(v.as_bytes()));
        }
        self.schedule.pick()
    }
}

#[derive(Debug)]
pub(crate) enum ValueMatch {
    Exact(Vec<u8>),
    Prefix(Vec<u8>),
    /// Anchored: the whole value must match.
    Regex(Regex),
}

impl ValueMatch {
    fn matches(&self, v: &[u8]) -> bool {
        match self {
            ValueMatch::Exact(e) => v == e.as_slice(),
            ValueMatch::Prefix(p) => v.starts_with(p),
            ValueMatch::Regex(r) => std::str::from_utf8(v).is_ok_and(|s| r.is_match(s)),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) headers: Vec<(HeaderName, ValueMatch)>,
    pub(crate) path_prefix: Option<String>,
    /// The request body's `model` equals this (see `prompt::Model`).
    pub(crate) model: Option<String>,
    pub(crate) variant: usize,
}

impl Route {
    /// All header matches hold (any value of a repeated header may satisfy one), the path starts
    /// with the prefix, and the body's model is the route's.
    pub(crate) fn matches(&self, path: &str, headers: &HeaderMap, model: Option<&str>) -> bool {
        if let Some(p) = &self.path_prefix
            && !path.starts_with(p.as_str())
        {
            return false;
        }
        if self.model.is_some() && self.model.as_deref() != model {
            return false;
        }
        self.headers.iter().all(|(name, m)| {
            headers
                .get_all(name)
                .iter()
                .any(|v| m.matches(v.as_bytes()))
        })
    }
}

/// Smooth weighted round robin, precomputed: `seq` is one period of nginx's smooth WRR over the
/// weights (reduced by their gcd), walked by an atomic counter, so choosing is lock-free.
#[derive(Debug)]
pub(crate) struct Schedule {
    seq: Vec<u16>,
    next: AtomicUsize,
}

/// Longest period kept; larger weight sums are scaled down to it.
const MAX_PERIOD: u64 = 10_000;

impl Schedule {
    pub(crate) fn new(weights: &[u32]) -> Self {
        let mut w: Vec<u64> = weights.iter().map(|w| u64::from(*w)).collect();
        let g = w.iter().copied().fold(0, gcd);
        if g > 1 {
            w.iter_mut().for_each(|x| *x /= g);
        }
        let total: u64 = w.iter().sum();
        if total > MAX_PERIOD {
            // Keep every non-zero weight non-zero.
            w.iter_mut().for_each(|x| {
                *x = if *x == 0 {
                    0
                } else {
                    (*x * MAX_PERIOD / total).max(1)
                }
            });
        }
        let total: i64 = w.iter().sum::<u64>() as i64;
        let mut current = vec![0i64; w.len()];
        let mut seq = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for i in 0..w.len() {
                current[i] += w[i] as i64;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            seq.push(best as u16);
        }
        Self {
            seq,
            next: AtomicUsize::new(0),
        }
    }

    pub(crate) fn pick(&self) -> Option<usize> {
        if self.seq.is_empty() {
            return None;
        }
        Some(usize::from(self.seq[next(&self.next) % self.seq.len()]))
    }

    /// The variant for a stable hash, in proportion to the weights (sticky cohorts).
    pub(crate) fn pick_by_hash(&self, h: u64) -> Option<usize> {
        if self.seq.is_empty() {
            return None;
        }
        // The sequence holds each variant `weight` times, so a uniform slot is weight-proportional;
        // the slot is fixed for a given hash.
        Some(usize::from(self.seq[(h % self.seq.len() as u64) as usize]))
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn counts(s: &Schedule, n: usize, k: usize) -> Vec<usize> {
        let mut c = vec![0; k];
        for _ in 0..n {
            c[s.pick().unwrap()] += 1;
        }
        c
    }

    #[test]
    fn schedule_is_exact_every_period() {
        let s = Schedule::new(&[90, 10]);
        assert_eq!(counts(&s, 10, 2), [9, 1]);
        assert_eq!(counts(&s, 10_000, 2), [9_000, 1_000]);
        let s = Schedule::new(&[50, 30, 20]);
        assert_eq!(counts(&s, 100, 3), [50, 30, 20]);
        assert_eq!(counts(&s, 10, 3), [5, 3, 2], "gcd-reduced period of 10");
    }

    #[test]
    fn schedule_is_smooth() {
        // 90/10: never two canary picks in a row, never more than 9 stable in a row.
        let s = Schedule::new(&[90, 10]);
        let seq: Vec<usize> = (0..100).map(|_| s.pick().unwrap()).collect();
        assert!(seq.windows(2).all(|w| !(w[0] == 1 && w[1] == 1)));
        assert!(seq.windows(10).all(|w| w.contains(&1)));
    }

    #[test]
    fn zero_weights_are_never_chosen_and_all_zero_chooses_nothing() {
        let s = Schedule::new(&[0, 100]);
        assert_eq!(counts(&s, 50, 2), [0, 50]);
        assert_eq!(Schedule::new(&[0, 0]).pick(), None);
        assert_eq!(Schedule::new(&[]).pick(), None);
    }

    #[test]
    fn huge_weights_are_scaled_and_kept_nonzero() {
        let s = Schedule::new(&[u32::MAX, 1]);
        let c = counts(&s, s.seq.len(), 2);
        assert!(c[1] >= 1 && c[0] > c[1] * 1000, "{c:?}");
    }

    #[test]
    fn sticky_hash_is_stable_and_proportional() {
        let s = Schedule::new(&[50, 50]);
        let mut c = [0; 2];
        for i in 0..2000 {
            let h = stable_hash(format!("user-{i}").as_bytes());
            let v = s.pick_by_hash(h).unwrap();
            assert_eq!(s.pick_by_hash(h), Some(v));
            c[v] += 1;
        }
        assert!((850..1150).contains(&c[0]), "{c:?}");
    }

    #[test]
    fn route_matches_all_headers_and_the_path_prefix() {
        let r = Route {
            headers: vec![
                (
                    HeaderName::from_static("x-user"),
                    ValueMatch::Exact(b"beta".to_vec()),
                ),
                (
                    HeaderName::from_static("x-model"),
                    ValueMatch::Regex(Regex::new("^(?:llama-[0-9]+)$").unwrap()),
                ),
            ],
            path_prefix: Some("/v1/".into()),
            model: None,
            variant: 1,
        };
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_static("beta"));
        h.insert("x-model", HeaderValue::from_static("llama-3"));
        assert!(r.matches("/v1/completions", &h, None));
        assert!(!r.matches("/v2/completions", &h, None));
        h.insert("x-model", HeaderValue::from_static("llama-3b"));
        assert!(!r.matches("/v1/completions", &h, None));
        h.insert("x-model", HeaderValue::from_static("llama-70"));
        h.append("x-user", HeaderValue::from_static("other"));
        assert!(
            r.matches("/v1/x", &h, None),
            "any value of a repeated header"
        );
        h.remove("x-user");
        assert!(!r.matches("/v1/x", &h, None));
        let p = Route {
            headers: vec![(
                HeaderName::from_static("x-user"),
                ValueMatch::Prefix(b"team-".to_vec()),
            )],
            path_prefix: None,
            model: None,
            variant: 0,
        };
        h.insert("x-user", HeaderValue::from_static("team-a"));
        assert!(p.matches("/", &h, None));
        let m = Route {
            headers: vec![],
            path_prefix: None,
            model: Some("summarizer".into()),
            variant: 1,
        };
        assert!(m.matches("/v1/chat/completions", &h, Some("summarizer")));
        assert!(!m.matches("/v1/chat/completions", &h, Some("base")));
        assert!(
            !m.matches("/v1/chat/completions", &h, None),
            "no body model, no match"
        );
        assert!(
            p.matches("/", &h, Some("anything")),
            "routes without a model ignore it"
        );
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Exact and prefix matching agree with their definitions for any bytes; regex matching
        /// never panics whatever the pattern or value.
        #[test]
        fn route_matching_follows_its_definition(
            want in proptest::collection::vec(any::<u8>(), 0..16),
            value in proptest::collection::vec(32u8..127, 0..16),
            pattern in ".{0,12}",
            path in "/?[ -~]{0,16}",
            prefix in "/?[ -~]{0,4}",
        ) {
            let name = HeaderName::from_static("x-match");
            let mut h = HeaderMap::new();
            h.insert(&name, HeaderValue::from_bytes(&value).unwrap());
            let route = |m| Route { headers: vec![(name.clone(), m)], path_prefix: Some(prefix.clone()), model: None, variant: 0 };
            let on_path = path.starts_with(prefix.as_str());
            prop_assert_eq!(route(ValueMatch::Exact(want.clone())).matches(&path, &h, None), on_path && value == want);
            prop_assert_eq!(route(ValueMatch::Prefix(want.clone())).matches(&path, &h, None), on_path && value.starts_with(&want));
            if let Ok(re) = Regex::new(&format!("^(?:{pattern})$")) {
                let _ = route(ValueMatch::Regex(re)).matches(&path, &h, None);
            }
            // A missing header never matches.
            prop_assert!(!route(ValueMatch::Prefix(Vec::new())).matches(&path, &HeaderMap::new(), None));
        }
    }
}
