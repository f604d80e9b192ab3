//! The load a serving sidecar reports on every response to a peer sidecar, in the ORCA
//! `endpoint-load-metrics` header's TEXT form (`TEXT cpu_utilization=0.3, named_metrics.queue=3`),
//! so the caller's balancer sees queue and KV pressure per response without scraping. The
//! same header is what gRPC and Envoy use for backend load, so a standard client can read the
//! standard keys and ignore ours.
//!
//! The header comes from a peer over the network, so `parse` treats it as untrusted: bounded in
//! size, every value checked, bad pairs dropped one by one rather than failing the whole report.
//!
//! LoRA adapters the engine holds are named metrics too, one per adapter by its key
//! (`named_metrics.lora.<16 hex digits>=1`, see `adapters`), with the engine's adapter slots
//! (`named_metrics.lora_slots=4`).

use super::adapters::Adapters;

/// The response header that carries the report.
pub(crate) const HEADER: &str = "endpoint-load-metrics";

/// Over this a header value is not a load report we sent; refuse it unread.
const MAX_LEN: usize = 1024;

/// The header's format prefix for the native-HTTP form.
const PREFIX: &str = "TEXT";

/// Before an adapter's key.
const LORA_PREFIX: &str = "named_metrics.lora.";
/// The engine's adapter slots.
const LORA_SLOTS: &str = "named_metrics.lora_slots";

/// What a serving sidecar reports about its model.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct LoadReport {
    /// `named_metrics.in_flight`: requests the sidecar has at its model now.
    pub(crate) in_flight: Option<f64>,
    /// `named_metrics.queue`: requests queued in the engine.
    pub(crate) waiting: Option<f64>,
    /// `named_metrics.running`: requests the engine is processing.
    pub(crate) running: Option<f64>,
    /// `named_metrics.kv`: KV-cache fraction used, 0..=1.
    pub(crate) kv_usage: Option<f64>,
    /// `named_metrics.prefix_hit`: recent prefix-cache hit rate, 0..=1.
    pub(crate) prefix_hit_rate: Option<f64>,
    /// `named_metrics.prompt_tokens`: prompt tokens in flight (an estimate).
    pub(crate) prompt_tokens: Option<f64>,
    /// `named_metrics.lora.*`, `named_metrics.lora_slots`: the adapters the engine holds.
    pub(crate) adapters: Adapters,
}

/// Whether a key's value is a fraction that must lie in 0..=1.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Range {
    Count,
    Fraction,
}

/// Every key we write, in the fixed order we write them.
const FIELDS: [(&str, Range); 6] = [
    ("named_metrics.in_flight", Range::Count),
    ("named_metrics.queue", Range::Count),
    ("named_metrics.running", Range::Count),
    ("named_metrics.kv", Range::Fraction),
    ("named_metrics.prefix_hit", Range::Fraction),
    ("named_metrics.prompt_tokens", Range::Count),
];

impl LoadReport {
    fn fields(&self) -> [Option<f64>; 6] {
        [
            self.in_flight,
            self.waiting,
            self.running,
            self.kv_usage,
            self.prefix_hit_rate,
            self.prompt_tokens,
        ]
    }

    fn field_mut(&mut self, i: usize) -> Option<&mut Option<f64>> {
        Some(match i {
            0 => &mut self.in_flight,
            1 => &mut self.waiting,
            2 => &mut self.running,
            3 => &mut self.kv_usage,
            4 => &mut self.prefix_hit_rate,
            5 => &mut self.prompt_tokens,
            _ => return None,
        })
    }

    /// The header value: `TEXT named_metrics.in_flight=3, named_metrics.kv=0.42`, present
    /// fields only, in a fixed order, each number in its shortest form that parses back to
    /// the same `f64`. A value `parse` would drop (NaN, infinite, negative) is not written, and
    /// fractions are clamped, so what we send is exactly what the peer will read. With no
    /// field present the value is just `TEXT`, which `parse` reads as no report.
    pub(crate) fn to_text(self) -> String {
        let mut out = String::with_capacity(160);
        out.push_str(PREFIX);
        let mut first = true;
        for ((key, range), value) in FIELDS.iter().zip(self.fields()) {
            let Some(v) = value.and_then(|v| checked(v, *range)) else {
                continue;
            };
            out.push_str(if first { " " } else { ", " });
            first = false;
            out.push_str(key);
            out.push('=');
            push_number(&mut out, v);
        }
        use std::fmt::Write;
        let mut pair = |out: &mut String| {
            out.push_str(if first { " " } else { ", " });
            first = false;
        };
        if let Some(slots) = self.adapters.slots {
            pair(&mut out);
            let _ = write!(out, "{LORA_SLOTS}={slots}");
        }
        for key in self.adapters.keys() {
            pair(&mut out);
            let _ = write!(out, "{LORA_PREFIX}{key:016x}=1");
        }
        out
    }

    /// Reads a peer's header value. None when it is not the TEXT form, is over 1 KiB, or has
    /// no usable field. Unknown keys (the standard `cpu_utilization`, `mem_utilization`,
    /// `application_utilization`, `rps_fractional`, `eps`, other `named_metrics.*`,
    /// `request_cost.*`, `utilization.*`) are ignored; a value that is not a finite,
    /// non-negative number drops only its own key; fractions are clamped to 0..=1. Pairs are
    /// `key=value` as ORCA's design and gRPC write them; `key:value`, which Envoy's own
    /// parser splits on, is accepted too.
    pub(crate) fn parse(value: &[u8]) -> Option<LoadReport> {
        if value.len() > MAX_LEN {
            return None;
        }
        let text = std::str::from_utf8(value).ok()?.trim();
        let body = text.strip_prefix(PREFIX)?;
        // `TEXT` must be followed by a space (or be the whole value): `TEXTUAL x=1` is not ours.
        if !(body.is_empty() || body.starts_with([' ', '\t'])) {
            return None;
        }
        let mut report = LoadReport::default();
        for pair in body.split(',') {
            let Some(sep) = pair.find(['=', ':']) else {
                continue;
            };
            let key = pair[..sep].trim();
            let value = pair[sep + 1..].trim();
            if let Some(hex) = key.strip_prefix(LORA_PREFIX) {
                if hex.len() == 16
                    && let Ok(k) = u64::from_str_radix(hex, 16)
                {
                    report.adapters.insert(k);
                }
                continue;
            }
            if key == LORA_SLOTS {
                if let Ok(n) = value.parse::<u32>() {
                    report.adapters.slots = Some(n);
                }
                continue;
            }
            let Some(i) = FIELDS.iter().position(|(k, _)| *k == key) else {
                continue;
            };
            let parsed = value.parse::<f64>().ok();
            if let (Some(v), Some(slot)) = (
                parsed.and_then(|v| checked(v, FIELDS[i].1)),
                report.field_mut(i),
            ) {
                *slot = Some(v);
            }
        }
        (report != LoadReport::default()).then_some(report)
    }
}

/// The value as we send and accept it: finite, non-negative, fractions clamped to 0..=1.
fn checked(v: f64, range: Range) -> Option<f64> {
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    // -0.0 passes `v < 0.0`; write it as 0 so the text never carries a sign.
    let v = if v == 0.0 { 0.0 } else { v };
    Some(match range {
        Range::Count => v,
        Range::Fraction => v.min(1.0),
    })
}

/// Appends `v` as briefly as round-tripping allows: whole numbers without a fraction (`3`),
/// others as Rust's shortest representation, in exponent form when very large or small so no
/// value can blow the header up (`1e300`, not 301 digits).
fn push_number(out: &mut String, v: f64) {
    use std::fmt::Write;
    let _ = if v.fract() == 0.0 && v < 1e15 {
        write!(out, "{v}")
    } else {
        write!(out, "{v:?}")
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn writes_present_fields_in_order() {
        let r = LoadReport {
            kv_usage: Some(0.42),
            in_flight: Some(3.0),
            ..LoadReport::default()
        };
        assert_eq!(
            r.to_text(),
            "TEXT named_metrics.in_flight=3, named_metrics.kv=0.42"
        );
        let all = LoadReport {
            in_flight: Some(3.0),
            waiting: Some(1.0),
            running: Some(2.0),
            kv_usage: Some(0.5),
            prefix_hit_rate: Some(0.75),
            prompt_tokens: Some(1e20),
            adapters: Adapters::default(),
        };
        assert_eq!(
            all.to_text(),
            "TEXT named_metrics.in_flight=3, named_metrics.queue=1, named_metrics.running=2, \
             named_metrics.kv=0.5, named_metrics.prefix_hit=0.75, named_metrics.prompt_tokens=1e20"
        );
        assert_eq!(LoadReport::default().to_text(), "TEXT");
        assert_eq!(LoadReport::parse(b"TEXT"), None);
    }

    #[test]
    fn reads_a_grpc_envoy_style_header() {
        let v = b"TEXT cpu_utilization=0.3, mem_utilization=0.8, rps_fractional=10.0, eps=1,\
                  named_metrics.custom_metric_util=0.4 ,  named_metrics.queue = 3 ,\
                  named_metrics.kv=0.42, request_cost.db=12, utilization.gpu=0.9";
        assert_eq!(
            LoadReport::parse(v),
            Some(LoadReport {
                waiting: Some(3.0),
                kv_usage: Some(0.42),
                ..LoadReport::default()
            })
        );
        // Envoy's parser splits pairs on ':'.
        assert_eq!(
            LoadReport::parse(b"TEXT cpu_utilization:0.3, named_metrics.running:2"),
            Some(LoadReport {
                running: Some(2.0),
                ..LoadReport::default()
            })
        );
    }

    #[test]
    fn adapters_travel_as_keys_with_the_engines_slots() {
        let r = LoadReport {
            waiting: Some(0.0),
            adapters: Adapters::of(["sql-lora", "chat, \"v2\"=x"], Some(4)),
            ..LoadReport::default()
        };
        let text = r.to_text();
        let key = crate::load::adapters::model_key("sql-lora");
        assert!(
            text.starts_with("TEXT named_metrics.queue=0, named_metrics.lora_slots=4, ")
                && text.contains(&format!("named_metrics.lora.{key:016x}=1")),
            "{text}"
        );
        assert_eq!(LoadReport::parse(text.as_bytes()), Some(r));
        // Adapters alone are a report; malformed keys and slot counts are dropped.
        let only = format!("TEXT named_metrics.lora.{key:016x}=1");
        let back = LoadReport::parse(only.as_bytes()).unwrap();
        assert!(back.adapters.holds(key) && back.adapters.slots.is_none());
        assert_eq!(
            LoadReport::parse(
                b"TEXT named_metrics.lora.xyz=1, named_metrics.lora.00112233445566778=1, \
                  named_metrics.lora_slots=-1, named_metrics.lora_slots=2.5"
            ),
            None
        );
    }

    #[test]
    fn refuses_what_is_not_a_usable_text_report() {
        assert_eq!(LoadReport::parse(b""), None);
        assert_eq!(
            LoadReport::parse(b"JSON {\"named_metrics\":{\"queue\":3}}"),
            None
        );
        assert_eq!(LoadReport::parse(b"BIN CZqZmZmZmbk/"), None);
        assert_eq!(LoadReport::parse(b"TEXTnamed_metrics.queue=3"), None);
        assert_eq!(LoadReport::parse(b"TEXT cpu_utilization=0.3"), None);
        assert_eq!(LoadReport::parse(b"TEXT named_metrics.queue=\xff"), None);
        let long = format!("TEXT named_metrics.queue=3,{}", " ".repeat(MAX_LEN));
        assert_eq!(LoadReport::parse(long.as_bytes()), None);
    }

    #[test]
    fn bad_values_drop_only_their_key_and_fractions_clamp() {
        let v = b"TEXT named_metrics.queue=NaN, named_metrics.running=inf, \
                  named_metrics.in_flight=-1, named_metrics.prompt_tokens=abc, \
                  named_metrics.kv=1.7, named_metrics.prefix_hit=0.25";
        assert_eq!(
            LoadReport::parse(v),
            Some(LoadReport {
                kv_usage: Some(1.0),
                prefix_hit_rate: Some(0.25),
                ..LoadReport::default()
            })
        );
    }

    fn field() -> impl Strategy<Value = Option<f64>> {
        prop_oneof![
            Just(None),
            (0.0..1e6f64).prop_map(Some),
            (0u32..10_000).prop_map(|n| Some(f64::from(n))),
            any::<f64>().prop_filter_map("finite, non-negative", |v| {
                (v.is_finite() && v >= 0.0).then_some(Some(v))
            }),
        ]
    }

    fn fraction() -> impl Strategy<Value = Option<f64>> {
        prop_oneof![Just(None), (0.0..=1.0f64).prop_map(Some)]
    }

    proptest! {
        #[test]
        fn round_trips(
            in_flight in field(), waiting in field(), running in field(),
            kv_usage in fraction(), prefix_hit_rate in fraction(), prompt_tokens in field(),
            keys in proptest::collection::vec(any::<u64>(), 0..12), slots in proptest::option::of(any::<u32>()),
        ) {
            let mut adapters = Adapters::of([], slots);
            for k in keys {
                adapters.insert(k);
            }
            let r = LoadReport { in_flight, waiting, running, kv_usage, prefix_hit_rate, prompt_tokens, adapters };
            let text = r.to_text();
            prop_assert!(text.len() <= MAX_LEN);
            let back = LoadReport::parse(text.as_bytes());
            if r == LoadReport::default() {
                prop_assert_eq!(back, None);
            } else {
                prop_assert_eq!(back, Some(r));
            }
        }

        #[test]
        fn parse_never_panics_and_yields_only_sane_values(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
            check_sane(LoadReport::parse(&bytes))?;
        }

        #[test]
        fn parse_survives_plausible_garbage(s in "TEXT ( ?(named_metrics\\.(in_flight|queue|running|kv|prefix_hit|prompt_tokens)|cpu_utilization|[a-z._]{0,12})[=:] ?(-?[0-9]{0,4}(\\.[0-9]{0,4})?(e-?[0-9]{1,3})?|NaN|inf|-inf|[^,]{0,6}),?){0,8}") {
            check_sane(LoadReport::parse(s.as_bytes()))?;
        }
    }

    fn check_sane(r: Option<LoadReport>) -> Result<(), TestCaseError> {
        if let Some(r) = r {
            prop_assert!(r != LoadReport::default());
            for v in r.fields().into_iter().flatten() {
                prop_assert!(v.is_finite() && v >= 0.0);
            }
            prop_assert!(r.adapters.keys().len() <= crate::load::adapters::MAX);
            for v in [r.kv_usage, r.prefix_hit_rate].into_iter().flatten() {
                prop_assert!(v <= 1.0);
            }
        }
        Ok(())
    }
}
