//! Reads a model server's Prometheus text (exposition format 0.0.4) for its load: queue length,
//! running requests, KV-cache usage, prefix-cache counters and LoRA adapters, for vLLM, SGLang,
//! llama.cpp and TensorRT-LLM. The sidecar scrapes its model every ~200 ms, so the parser is a
//! hand-written line scanner rather than a general Prometheus parser: it looks only at the few
//! names it needs, parses labels only for the one series that carries data in labels
//! (`vllm:lora_requests_info`), and bounds its work so that a runaway `/metrics` cannot stall
//! the scrape loop.

use thiserror::Error;

/// Work bound: text beyond this is ignored (a real exposition is tens of KiB).
const MAX_BYTES: usize = 4 << 20;
/// Work bound on lines, for texts made of many tiny lines.
const MAX_LINES: usize = 100_000;

/// The model-server families whose metric names we know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Engine {
    Vllm,
    Sglang,
    LlamaCpp,
    TrtLlm,
}

impl Engine {
    const ALL: [Engine; 4] = [
        Engine::Vllm,
        Engine::Sglang,
        Engine::LlamaCpp,
        Engine::TrtLlm,
    ];

    fn prefix(self) -> &'static str {
        match self {
            Engine::Vllm => "vllm:",
            Engine::Sglang => "sglang:",
            Engine::LlamaCpp => "llamacpp:",
            Engine::TrtLlm => "trtllm_",
        }
    }

    /// The engine whose metric-name prefix appears first on a sample line, so a pod can be
    /// scraped without being told what it runs.
    pub(crate) fn detect(text: &str) -> Option<Engine> {
        lines(text)
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| Engine::ALL.into_iter().find(|e| l.starts_with(e.prefix())))
    }

    /// What a metric name means for this engine, if anything we read.
    fn signal(self, name: &str) -> Option<Signal> {
        // Counters: Python's prometheus_client writes `x_total` for a counter `x`; accept both
        // so a client-library change cannot blind us.
        let counter = |base: &str| name == base || name.strip_suffix("_total") == Some(base);
        match self {
            Engine::Vllm => match name {
                "vllm:num_requests_waiting" => Some(Signal::Waiting),
                "vllm:num_requests_running" => Some(Signal::Running),
                // Both are fractions 0..=1 despite `_perc`; the old name is from pre-V1 builds.
                "vllm:kv_cache_usage_perc" | "vllm:gpu_cache_usage_perc" => Some(Signal::Kv),
                "vllm:lora_requests_info" => Some(Signal::Lora),
                _ if counter("vllm:prefix_cache_queries") => Some(Signal::Queries),
                _ if counter("vllm:prefix_cache_hits") => Some(Signal::Hits),
                _ => None,
            },
            Engine::Sglang => match name {
                "sglang:num_queue_reqs" => Some(Signal::Waiting),
                "sglang:num_running_reqs" => Some(Signal::Running),
                "sglang:token_usage" => Some(Signal::Kv),
                "sglang:cache_hit_rate" => Some(Signal::HitGauge),
                _ => None,
            },
            Engine::TrtLlm => match name {
                "trtllm_num_requests_waiting" => Some(Signal::Waiting),
                "trtllm_num_requests_running" => Some(Signal::Running),
                "trtllm_kv_cache_utilization" => Some(Signal::Kv),
                _ => None,
            },
            Engine::LlamaCpp => match name {
                "llamacpp:requests_deferred" => Some(Signal::Waiting),
                "llamacpp:requests_processing" => Some(Signal::Running),
                // Only in some builds; current ones have no KV gauge.
                "llamacpp:kv_cache_usage_ratio" => Some(Signal::Kv),
                // `prompt_tokens_total` excludes cached tokens (its HELP says so), so the
                // queried tokens are prompt + cached; see `Acc::finish`.
                _ if counter("llamacpp:prompt_tokens_cached") => Some(Signal::Hits),
                _ if counter("llamacpp:prompt_tokens") => Some(Signal::UncachedPrompt),
                _ => None,
            },
        }
    }
}

/// One scrape's reading; None where the engine does not publish that signal.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct EngineLoad {
    /// Requests queued, not yet scheduled.
    pub(crate) waiting: Option<f64>,
    /// Requests being processed.
    pub(crate) running: Option<f64>,
    /// KV-cache fraction used, 0..=1 (clamped).
    pub(crate) kv_usage: Option<f64>,
    /// Cumulative prompt tokens looked up in the prefix cache.
    pub(crate) prefix_queries: Option<f64>,
    /// Cumulative prompt tokens found in the prefix cache.
    pub(crate) prefix_hits: Option<f64>,
    /// An engine's own hit-rate gauge (SGLang `cache_hit_rate`), 0..=1 (clamped).
    pub(crate) hit_rate_gauge: Option<f64>,
    pub(crate) lora: Option<LoraInfo>,
}

/// vLLM's LoRA state, from the labels of `vllm:lora_requests_info`.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct LoraInfo {
    pub(crate) running: Vec<String>,
    pub(crate) waiting: Vec<String>,
    pub(crate) max: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub(crate) enum MetricsError {
    #[error(
        "no line of the metrics text is a Prometheus sample: check that the scrape URL is the model server's /metrics"
    )]
    Malformed,
    #[error(
        "the metrics text has none of the engine's waiting/running gauges: check the engine kind and that metrics are enabled (vLLM by default, SGLang --enable-metrics, llama-server --metrics)"
    )]
    NoLoad,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signal {
    Waiting,
    Running,
    Kv,
    Queries,
    Hits,
    UncachedPrompt,
    HitGauge,
    Lora,
}

/// Reads one scrape of `engine`'s `/metrics` text.
pub(crate) fn parse(engine: Engine, text: &str) -> Result<EngineLoad, MetricsError> {
    let prefix = engine.prefix();
    let mut acc = Acc::default();
    let mut any_sample = false;
    for line in lines(text) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let ours = line.starts_with(prefix);
        // Once one sample has parsed the text is known to be Prometheus; lines of other
        // families need no further look, which keeps a 200 ms scrape cheap.
        if !ours && any_sample {
            continue;
        }
        let Some(sample) = Sample::parse(line) else {
            continue;
        };
        any_sample = true;
        if !ours {
            continue;
        }
        if let Some(signal) = engine.signal(sample.name) {
            acc.add(signal, &sample);
        }
    }
    if !any_sample {
        return Err(MetricsError::Malformed);
    }
    let load = acc.finish();
    if load.waiting.is_none() && load.running.is_none() {
        return Err(MetricsError::NoLoad);
    }
    Ok(load)
}

/// Prefix-cache hit rate between two readings of the cumulative counters: None if a counter
/// went backwards (the engine restarted) or nothing was queried in between. Without counters
/// it falls back to the engine's own gauge in `cur`.
pub(crate) fn hit_rate(prev: &EngineLoad, cur: &EngineLoad) -> Option<f64> {
    match (
        prev.prefix_queries,
        prev.prefix_hits,
        cur.prefix_queries,
        cur.prefix_hits,
    ) {
        (Some(pq), Some(ph), Some(cq), Some(ch)) => {
            let (dq, dh) = (cq - pq, ch - ph);
            if dq < 0.0 || dh < 0.0 || dq == 0.0 {
                return None;
            }
            Some((dh / dq).clamp(0.0, 1.0))
        }
        _ => cur.hit_rate_gauge,
    }
}

/// The lines within the work bounds. A text cut at the byte bound loses its partial last
/// line, so a number cut in half is never read as a smaller number.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let bounded = if text.len() > MAX_BYTES {
        let cut = &text.as_bytes()[..MAX_BYTES];
        let end = cut.iter().rposition(|&b| b == b'\n').unwrap_or(0);
        // `end` is a '\n' byte (or 0), always a char boundary.
        text.get(..end).unwrap_or("")
    } else {
        text
    };
    bounded.lines().take(MAX_LINES).map(str::trim_start)
}

/// One sample line: `name{labels} value [timestamp]`; labels are kept raw and decoded only
/// on demand.
struct Sample<'a> {
    name: &'a str,
    labels: &'a str,
    value: f64,
}

impl<'a> Sample<'a> {
    fn parse(line: &'a str) -> Option<Sample<'a>> {
        let bytes = line.as_bytes();
        let name_end = bytes
            .iter()
            .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b':'))
            .unwrap_or(bytes.len());
        let name = &line[..name_end];
        if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
            return None;
        }
        let mut rest = &line[name_end..];
        let mut labels = "";
        if rest.starts_with('{') {
            let close = label_block_end(rest.as_bytes())?;
            labels = &rest[1..close];
            rest = &rest[close + 1..];
        }
        // The value must be separated from what precedes it; a timestamp may follow.
        if !rest.starts_with([' ', '\t']) {
            return None;
        }
        let mut fields = rest.split_ascii_whitespace();
        let value = parse_value(fields.next()?)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().ok()?;
        }
        if fields.next().is_some() {
            return None;
        }
        Some(Sample {
            name,
            labels,
            value,
        })
    }

    /// The decoded value of label `key`, if present.
    fn label(&self, key: &str) -> Option<String> {
        let mut rest = self.labels;
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            let eq = rest.find('=')?;
            let k = rest[..eq].trim();
            rest = rest[eq + 1..].trim_start();
            let quoted = rest.strip_prefix('"')?;
            let (value, after) = unescape_quoted(quoted)?;
            if k == key {
                return Some(value);
            }
            rest = after;
        }
    }
}

/// Index of the `}` closing a label block that starts at `b[0] == b'{'`, skipping quoted
/// values, where `}` `,` `"` may appear escaped or verbatim.
fn label_block_end(b: &[u8]) -> Option<usize> {
    let mut in_quote = false;
    let mut i = 1;
    while i < b.len() {
        match (in_quote, b[i]) {
            (true, b'\\') => i += 1,
            (true, b'"') => in_quote = false,
            (false, b'"') => in_quote = true,
            (false, b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Decodes a label value after its opening quote (`\\`, `\"`, `\n` per the format) and
/// returns it with the text after its closing quote.
fn unescape_quoted(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// A sample value as the format writes it (`42`, `0.5`, `1.7e+09`, `NaN`, `+Inf`).
fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        // Rust also accepts "inf"/"infinity"/"nan" spellings; they end up ignored as
        // non-finite by the callers, like the canonical ones.
        _ => s.parse().ok(),
    }
}

/// Running totals of one scrape: sums for counts and counters (series per `engine`/rank or
/// per model add up), maxima for fractions (the fullest rank is the one that queues).
#[derive(Default)]
struct Acc {
    waiting: Option<f64>,
    running: Option<f64>,
    kv: Option<f64>,
    queries: Option<f64>,
    hits: Option<f64>,
    uncached: Option<f64>,
    hit_gauge: Option<f64>,
    /// The newest `lora_requests_info` series (its value is the time it was set).
    lora: Option<(f64, LoraInfo)>,
}

impl Acc {
    fn add(&mut self, signal: Signal, sample: &Sample<'_>) {
        let v = sample.value;
        // A NaN, infinite or negative load is no reading at all; a zero is a reading.
        if !v.is_finite() || v < 0.0 {
            return;
        }
        let sum = |slot: &mut Option<f64>| *slot = Some(slot.unwrap_or(0.0) + v);
        let max = |slot: &mut Option<f64>| {
            let v = v.min(1.0);
            *slot = Some(slot.map_or(v, |old: f64| old.max(v)));
        };
        match signal {
            Signal::Waiting => sum(&mut self.waiting),
            Signal::Running => sum(&mut self.running),
            Signal::Queries => sum(&mut self.queries),
            Signal::Hits => sum(&mut self.hits),
            Signal::UncachedPrompt => sum(&mut self.uncached),
            Signal::Kv => max(&mut self.kv),
            Signal::HitGauge => max(&mut self.hit_gauge),
            Signal::Lora => {
                if self.lora.as_ref().is_none_or(|(t, _)| v > *t) {
                    self.lora = Some((v, lora_info(sample)));
                }
            }
        }
    }

    fn finish(self) -> EngineLoad {
        // llama.cpp has no queries counter: its queried tokens are uncached + cached, and
        // without the cached counter there is no hit rate to compute.
        let (queries, hits) = match (self.queries, self.uncached, self.hits) {
            (Some(q), _, h) => (Some(q), h),
            (None, Some(u), Some(h)) => (Some(u + h), Some(h)),
            (None, _, _) => (None, None),
        };
        EngineLoad {
            waiting: self.waiting,
            running: self.running,
            kv_usage: self.kv,
            prefix_queries: queries,
            prefix_hits: queries.and(hits),
            hit_rate_gauge: self.hit_gauge,
            lora: self.lora.map(|(_, info)| info),
        }
    }
}

fn lora_info(sample: &Sample<'_>) -> LoraInfo {
    let list = |key: &str| -> Vec<String> {
        sample
            .label(key)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    };
    LoraInfo {
        running: list("running_lora_adapters"),
        waiting: list("waiting_lora_adapters"),
        max: sample.label("max_lora").and_then(|m| m.trim().parse().ok()),
    }
}

#[cfg(test)]
mod tests;
