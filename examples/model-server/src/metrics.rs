//! `/metrics` in the Prometheus text format, with vLLM V1's names, types, help texts, labels
//! (`model_name`, `engine`) and histogram buckets, so dashboards and routers written for vLLM read
//! the simulator unchanged. As with Python's prometheus_client, a counter named `vllm:x` is
//! exposed as the sample `vllm:x_total`.

use std::fmt::Write;

/// vLLM's `vllm:time_to_first_token_seconds` buckets.
pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// vLLM's `vllm:inter_token_latency_seconds` buckets.
pub const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
/// vLLM's request-latency buckets (`e2e_request_latency`, `request_queue_time`).
pub const REQUEST_LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

/// vLLM's `vllm:iteration_tokens_total` buckets.
pub const ITERATION_TOKENS_BUCKETS: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];

/// vLLM's `build_1_2_5_buckets(max)`: 1, 2, 5, 10, 20, 50, ... up to `max` (token-count
/// histograms, bounded by the context length).
pub fn buckets_1_2_5(max: usize) -> Vec<f64> {
    let mut out = Vec::new();
    let mut scale: u64 = 1;
    loop {
        for m in [1, 2, 5] {
            let v = m * scale;
            if v > max as u64 {
                return out;
            }
            out.push(v as f64);
        }
        scale = scale.saturating_mul(10);
    }
}

/// A Prometheus histogram (bucket counts kept non-cumulative, summed on output).
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &[f64]) -> Self {
        Self {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }
}

/// Every value `/metrics` shows; the engine task updates it after each step.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub num_requests_running: usize,
    pub num_requests_waiting: usize,
    pub kv_cache_usage: f64,
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    pub num_preemptions: u64,
    pub success_stop: u64,
    pub success_length: u64,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    pub queue: Histogram,
    pub prefill_time: Histogram,
    pub decode_time: Histogram,
    pub inference_time: Histogram,
    pub request_prompt_tokens: Histogram,
    pub request_generation_tokens: Histogram,
    pub request_max_tokens: Histogram,
    pub iteration_tokens: Histogram,
    /// `Some(max_loras)` when LoRA adapters are served.
    pub max_lora: Option<usize>,
    pub running_lora_adapters: Vec<String>,
    pub waiting_lora_adapters: Vec<String>,
    /// Unix time of the last LoRA-info update (the gauge's value, as vLLM sets it).
    pub lora_info_time: f64,
    /// KV-cache geometry, shown by `vllm:cache_config_info` (routers read the block size).
    pub block_size: usize,
    pub num_gpu_blocks: usize,
}

impl Metrics {
    /// Metrics of an engine serving `max_model_len` tokens, with `max_lora` when it serves LoRA
    /// adapters.
    pub fn new(max_lora: Option<usize>, max_model_len: usize) -> Self {
        let tokens = buckets_1_2_5(max_model_len);
        Self {
            num_requests_running: 0,
            num_requests_waiting: 0,
            kv_cache_usage: 0.0,
            prefix_cache_queries: 0,
            prefix_cache_hits: 0,
            prompt_tokens: 0,
            generation_tokens: 0,
            num_preemptions: 0,
            success_stop: 0,
            success_length: 0,
            ttft: Histogram::new(TTFT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
            e2e: Histogram::new(REQUEST_LATENCY_BUCKETS),
            queue: Histogram::new(REQUEST_LATENCY_BUCKETS),
            prefill_time: Histogram::new(REQUEST_LATENCY_BUCKETS),
            decode_time: Histogram::new(REQUEST_LATENCY_BUCKETS),
            inference_time: Histogram::new(REQUEST_LATENCY_BUCKETS),
            request_prompt_tokens: Histogram::new(&tokens),
            request_generation_tokens: Histogram::new(&tokens),
            request_max_tokens: Histogram::new(&tokens),
            iteration_tokens: Histogram::new(ITERATION_TOKENS_BUCKETS),
            max_lora,
            running_lora_adapters: Vec::new(),
            waiting_lora_adapters: Vec::new(),
            lora_info_time: 0.0,
            block_size: 16,
            num_gpu_blocks: 0,
        }
    }

    /// The text exposition; `model` is the `model_name` label.
    pub fn render(&self, model: &str) -> String {
        let labels = format!("model_name=\"{}\",engine=\"0\"", escape(model));
        let mut out = String::with_capacity(8192);
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            let _ = writeln!(out, "{name}{{{labels}}} {}", num(v));
        };
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name}_total{{{labels}}} {}", num(v as f64));
        };
        gauge(
            &mut out,
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            self.num_requests_running as f64,
        );
        gauge(
            &mut out,
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            self.num_requests_waiting as f64,
        );
        gauge(
            &mut out,
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            self.kv_cache_usage,
        );
        counter(
            &mut out,
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            self.prefix_cache_queries,
        );
        counter(
            &mut out,
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            self.prefix_cache_hits,
        );
        counter(
            &mut out,
            "vllm:num_preemptions",
            "Cumulative number of preemption from the engine.",
            self.num_preemptions,
        );
        counter(
            &mut out,
            "vllm:prompt_tokens",
            "Number of prefill tokens processed.",
            self.prompt_tokens,
        );
        counter(
            &mut out,
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            self.generation_tokens,
        );
        let name = "vllm:request_success";
        let _ = writeln!(
            out,
            "# HELP {name} Count of successfully processed requests.\n# TYPE {name} counter"
        );
        for (reason, v) in [("stop", self.success_stop), ("length", self.success_length)] {
            let _ = writeln!(
                out,
                "{name}_total{{{labels},finished_reason=\"{reason}\"}} {}",
                num(v as f64)
            );
        }
        for (name, help, h) in [
            (
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                &self.ttft,
            ),
            (
                "vllm:inter_token_latency_seconds",
                "Histogram of inter-token latency in seconds.",
                &self.itl,
            ),
            (
                "vllm:e2e_request_latency_seconds",
                "Histogram of e2e request latency in seconds.",
                &self.e2e,
            ),
            (
                "vllm:request_queue_time_seconds",
                "Histogram of time spent in WAITING phase for request.",
                &self.queue,
            ),
            (
                "vllm:request_prefill_time_seconds",
                "Histogram of time spent in PREFILL phase for request.",
                &self.prefill_time,
            ),
            (
                "vllm:request_decode_time_seconds",
                "Histogram of time spent in DECODE phase for request.",
                &self.decode_time,
            ),
            (
                "vllm:request_inference_time_seconds",
                "Histogram of time spent in RUNNING phase for request.",
                &self.inference_time,
            ),
            (
                "vllm:request_prompt_tokens",
                "Number of prefill tokens processed.",
                &self.request_prompt_tokens,
            ),
            (
                "vllm:request_generation_tokens",
                "Number of generation tokens processed.",
                &self.request_generation_tokens,
            ),
            (
                "vllm:request_params_max_tokens",
                "Histogram of the max_tokens request parameter.",
                &self.request_max_tokens,
            ),
            (
                "vllm:iteration_tokens_total",
                "Histogram of number of tokens per engine_step.",
                &self.iteration_tokens,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            let mut cumulative = 0;
            for (bound, c) in h.bounds.iter().zip(&h.counts) {
                cumulative += c;
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{labels},le=\"{}\"}} {}",
                    num(*bound),
                    num(cumulative as f64)
                );
            }
            let count = num(h.count as f64);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", num(h.sum));
        }
        let name = "vllm:cache_config_info";
        let _ = writeln!(
            out,
            "# HELP {name} Information of the LLMEngine CacheConfig\n# TYPE {name} gauge"
        );
        let _ = writeln!(
            out,
            "{name}{{block_size=\"{}\",enable_prefix_caching=\"True\",engine=\"0\",num_gpu_blocks=\"{}\"}} 1.0",
            self.block_size, self.num_gpu_blocks
        );
        if let Some(max) = self.max_lora {
            let name = "vllm:lora_requests_info";
            let _ = writeln!(
                out,
                "# HELP {name} Running stats on lora requests.\n# TYPE {name} gauge"
            );
            let _ = writeln!(
                out,
                "{name}{{max_lora=\"{max}\",waiting_lora_adapters=\"{}\",running_lora_adapters=\"{}\"}} {}",
                escape(&self.waiting_lora_adapters.join(",")),
                escape(&self.running_lora_adapters.join(",")),
                num(self.lora_info_time)
            );
        }
        out
    }
}

/// A number as Python's prometheus_client writes it: always with a fraction (`42.0`, `0.25`).
fn num(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_uses_vllm_names_and_cumulative_buckets() {
        let mut m = Metrics::new(Some(2), 100);
        m.num_requests_running = 3;
        m.prompt_tokens = 42;
        m.ttft.observe(0.003);
        m.ttft.observe(0.2);
        m.ttft.observe(9999.0);
        m.running_lora_adapters = vec!["a".into(), "b".into()];
        m.lora_info_time = 1_700_000_000.5;
        let text = m.render("my\"model");
        let l = r#"model_name="my\"model",engine="0""#;
        assert!(text.contains(&format!("vllm:num_requests_running{{{l}}} 3.0\n")));
        assert!(text.contains("# TYPE vllm:prompt_tokens counter\n"));
        assert!(text.contains(&format!("vllm:prompt_tokens_total{{{l}}} 42.0\n")));
        assert!(text.contains(&format!(
            "vllm:time_to_first_token_seconds_bucket{{{l},le=\"0.001\"}} 0.0\n"
        )));
        assert!(text.contains(&format!(
            "vllm:time_to_first_token_seconds_bucket{{{l},le=\"0.005\"}} 1.0\n"
        )));
        assert!(text.contains(&format!(
            "vllm:time_to_first_token_seconds_bucket{{{l},le=\"2560.0\"}} 2.0\n"
        )));
        assert!(text.contains(&format!(
            "vllm:time_to_first_token_seconds_bucket{{{l},le=\"+Inf\"}} 3.0\n"
        )));
        assert!(text.contains(&format!(
            "vllm:time_to_first_token_seconds_count{{{l}}} 3.0\n"
        )));
        assert!(text.contains(
            "vllm:lora_requests_info{max_lora=\"2\",waiting_lora_adapters=\"\",running_lora_adapters=\"a,b\"} 1700000000.5\n"
        ));
        assert!(text.contains(
            "vllm:cache_config_info{block_size=\"16\",enable_prefix_caching=\"True\",engine=\"0\",num_gpu_blocks=\"0\"} 1.0\n"
        ));
        assert_eq!(TTFT_BUCKETS.len(), 22);
        assert_eq!(ITL_BUCKETS.len(), 19);
        assert_eq!(REQUEST_LATENCY_BUCKETS.len(), 21);
        // Every line is a comment or `name{labels} value`.
        for line in text.lines() {
            assert!(
                line.starts_with('#') || line.split(' ').count() == 2,
                "{line}"
            );
        }
        assert!(!Metrics::new(None, 100).render("m").contains("lora"));
        assert_eq!(buckets_1_2_5(100), [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]);
        assert_eq!(buckets_1_2_5(4096).last(), Some(&2000.0));
        assert!(text.contains(&format!(
            "vllm:request_prompt_tokens_bucket{{{l},le=\"100.0\"}} 0.0\n"
        )));
    }
}
