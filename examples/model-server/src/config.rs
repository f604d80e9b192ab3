//! Command-line flags of `infermesh-model-server` and the validated settings they produce.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use http::StatusCode;

/// Default decode-step base cost: with `DEFAULT_DECODE_US_PER_SEQ` a batch of 8 takes ~20 ms.
const DEFAULT_STEP_BASE_US: u64 = 16_000;
/// Default prefill cost per token: ~5k prompt tokens/s, a small GPU's shape.
const DEFAULT_PREFILL_US_PER_TOKEN: u64 = 200;
/// Default decode cost per running sequence.
const DEFAULT_DECODE_US_PER_SEQ: u64 = 500;

/// How answer tokens are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Echo the prompt's (last message's) tokens in a loop.
    Echo,
    /// Draw words from a fixed vocabulary, seeded by `--seed`, the request's `seed` and prompt.
    Random,
}

/// Flags, as documented in `examples/README.md`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "infermesh-model-server",
    about = "OpenAI-compatible LLM engine simulator (vLLM V1-like scheduling, KV cache, prefix cache, LoRA); no model weights",
    disable_version_flag = true
)]
pub struct Args {
    /// TCP port to listen on.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub address: IpAddr,
    /// Version label sent in every answer (header `x-model-version`).
    #[arg(long, default_value = "v1")]
    pub version: String,
    /// Base model name: reported in answers, listed by /v1/models, the `model_name` metric label.
    #[arg(long, default_value = "infermesh-demo")]
    pub model: String,
    /// Smallest gap between two streamed tokens, in milliseconds. Given without any step-cost
    /// flag, the engine's steps cost nothing (non-streamed answers come at once) and streams are
    /// paced at exactly this interval, as before the simulator.
    #[arg(long)]
    pub token_interval_ms: Option<u64>,
    /// Extra delay before answering any request except /health and /metrics, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Fraction of requests (except /health and /metrics) answered with --error-status, 0.0 to 1.0.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// HTTP status of injected errors.
    #[arg(long, default_value_t = 503)]
    pub error_status: u16,
    /// Longest wait for in-flight requests after SIGTERM, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub shutdown_grace_ms: u64,
    /// Seed of every random choice (answer words, answer lengths, injected errors).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How answer tokens are chosen.
    #[arg(long, value_enum, default_value_t = Mode::Echo)]
    pub mode: Mode,
    /// Mean answer length before the simulated end-of-sequence (finish_reason "stop"); lengths
    /// are drawn from a geometric distribution. 0: no end-of-sequence, answers run to max_tokens.
    #[arg(long, default_value_t = 0.0)]
    pub mean_output_tokens: f64,
    /// Longest prompt + answer, in tokens; longer requests are refused with 400.
    #[arg(long, default_value_t = 4096)]
    pub max_model_len: u32,
    /// Most sequences running (in the batch) at once.
    #[arg(long, default_value_t = 64)]
    pub max_num_seqs: u32,
    /// Most tokens computed in one step (decodes count one each; long prompts are chunked).
    #[arg(long, default_value_t = 2048)]
    pub max_batched_tokens: u32,
    /// Most requests waiting for admission; more are refused with 429.
    #[arg(long, default_value_t = 1024)]
    pub max_waiting: u32,
    /// KV-cache size, in blocks of --block-size tokens.
    #[arg(long, default_value_t = 2048)]
    pub kv_blocks: u32,
    /// Tokens per KV-cache block (the prefix cache's unit).
    #[arg(long, default_value_t = 16)]
    pub block_size: u32,
    /// Fixed cost of one engine step, in microseconds [default: 16000].
    #[arg(long)]
    pub step_base_us: Option<u64>,
    /// Cost of each prompt token computed in a step, in microseconds [default: 200].
    #[arg(long)]
    pub prefill_us_per_token: Option<u64>,
    /// Cost of each sequence decoding one token in a step, in microseconds [default: 500].
    #[arg(long)]
    pub decode_us_per_seq: Option<u64>,
    /// LoRA adapters served besides the base model, by name (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub lora: Vec<String>,
    /// Most LoRA adapters resident at once (least recently used one unloaded first).
    #[arg(long, default_value_t = 1)]
    pub max_loras: u32,
    /// Cost of loading a LoRA adapter that is not resident, added to the step that admits it.
    #[arg(long, default_value_t = 100)]
    pub lora_load_ms: u64,
}

/// Why the flags cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("--error-rate must be between 0.0 and 1.0, got {0}")]
    ErrorRate(f64),
    #[error("--error-status must be an HTTP status from 400 to 599, got {0}")]
    ErrorStatus(u16),
    #[error("--version must be a non-empty value usable as an HTTP header, got {0:?}")]
    Version(String),
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error(
        "--kv-blocks {blocks} x --block-size {block_size} holds fewer tokens than --max-model-len {max_model_len}: one request could never fit"
    )]
    KvTooSmall {
        blocks: u32,
        block_size: u32,
        max_model_len: u32,
    },
    #[error("{0} must be at most {1}, got {2}")]
    TooLarge(&'static str, u64, u64),
    #[error(
        "--max-batched-tokens {0} is below --max-num-seqs {1}: a full batch could not decode one token each per step"
    )]
    BudgetBelowBatch(u32, u32),
    #[error("--mean-output-tokens must be a finite number >= 0, got {0}")]
    MeanOutput(f64),
    #[error("--lora names must be non-empty, distinct and differ from --model, got {0:?}")]
    Lora(Vec<String>),
}

/// Largest step-cost flag, in microseconds (10 s): keeps simulated times far from overflow.
const MAX_COST_US: u64 = 10_000_000;
/// Largest `--lora-load-ms` (10 min).
const MAX_LORA_LOAD_MS: u64 = 600_000;
/// Largest `--kv-blocks`: the pool keeps a few dozen bytes per block.
const MAX_KV_BLOCKS: u64 = 1 << 20;

fn at_most(value: u64, max: u64, flag: &'static str) -> Result<u64, ConfigError> {
    if value > max {
        return Err(ConfigError::TooLarge(flag, max, value));
    }
    Ok(value)
}

/// What one engine step costs: `base + prefill x prompt tokens + decode x decoding sequences`,
/// plus `lora_load` per adapter loaded in the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StepCost {
    pub base: Duration,
    pub prefill_per_token: Duration,
    pub decode_per_seq: Duration,
    pub lora_load: Duration,
}

impl StepCost {
    /// The small-GPU shape: prefill ~5k tok/s, a decode step ~20 ms at batch 8.
    pub fn small_gpu() -> Self {
        Self {
            base: Duration::from_micros(DEFAULT_STEP_BASE_US),
            prefill_per_token: Duration::from_micros(DEFAULT_PREFILL_US_PER_TOKEN),
            decode_per_seq: Duration::from_micros(DEFAULT_DECODE_US_PER_SEQ),
            lora_load: Duration::from_millis(100),
        }
    }
}

/// Settings of the simulated engine.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    pub max_model_len: usize,
    pub max_num_seqs: usize,
    pub max_batched_tokens: usize,
    pub max_waiting: usize,
    pub kv_blocks: usize,
    pub block_size: usize,
    pub cost: StepCost,
    pub loras: Vec<String>,
    pub max_loras: usize,
    pub seed: u64,
    pub mode: Mode,
    pub mean_output_tokens: f64,
}

impl Default for EngineConfig {
    /// The flags' defaults, except that steps cost nothing (see [`Config::new`]).
    fn default() -> Self {
        Self {
            max_model_len: 4096,
            max_num_seqs: 64,
            max_batched_tokens: 2048,
            max_waiting: 1024,
            kv_blocks: 2048,
            block_size: 16,
            cost: StepCost::default(),
            loras: Vec::new(),
            max_loras: 1,
            seed: 0,
            mode: Mode::Echo,
            mean_output_tokens: 0.0,
        }
    }
}

/// Validated settings the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub version: String,
    pub model: String,
    pub pod: String,
    /// Smallest gap between two streamed tokens (zero: as the engine produces them).
    pub token_interval: Duration,
    pub latency: Duration,
    pub error_rate: f64,
    pub error_status: StatusCode,
    pub shutdown_grace: Duration,
    pub engine: EngineConfig,
}

fn at_least_one(value: u32, flag: &'static str) -> Result<usize, ConfigError> {
    if value == 0 {
        return Err(ConfigError::Zero(flag));
    }
    Ok(value as usize)
}

impl Config {
    /// Checks the flags; `pod` is the pod name (the container's HOSTNAME).
    pub fn from_args(args: &Args, pod: String) -> Result<Self, ConfigError> {
        if !(0.0..=1.0).contains(&args.error_rate) {
            return Err(ConfigError::ErrorRate(args.error_rate));
        }
        let error_status = StatusCode::from_u16(args.error_status)
            .ok()
            .filter(|s| s.is_client_error() || s.is_server_error())
            .ok_or(ConfigError::ErrorStatus(args.error_status))?;
        if args.version.is_empty() || http::HeaderValue::from_str(&args.version).is_err() {
            return Err(ConfigError::Version(args.version.clone()));
        }
        if !args.mean_output_tokens.is_finite() || args.mean_output_tokens < 0.0 {
            return Err(ConfigError::MeanOutput(args.mean_output_tokens));
        }
        for (v, flag) in [
            (args.step_base_us, "--step-base-us"),
            (args.prefill_us_per_token, "--prefill-us-per-token"),
            (args.decode_us_per_seq, "--decode-us-per-seq"),
        ] {
            at_most(v.unwrap_or(0), MAX_COST_US, flag)?;
        }
        at_most(args.lora_load_ms, MAX_LORA_LOAD_MS, "--lora-load-ms")?;
        at_most(u64::from(args.kv_blocks), MAX_KV_BLOCKS, "--kv-blocks")?;
        let max_model_len = at_least_one(args.max_model_len, "--max-model-len")?;
        let block_size = at_least_one(args.block_size, "--block-size")?;
        let kv_blocks = at_least_one(args.kv_blocks, "--kv-blocks")?;
        if (kv_blocks as u64) * (block_size as u64) < max_model_len as u64 {
            return Err(ConfigError::KvTooSmall {
                blocks: args.kv_blocks,
                block_size: args.block_size,
                max_model_len: args.max_model_len,
            });
        }
        // As vLLM requires: otherwise some running sequences would stall every step.
        if args.max_batched_tokens < args.max_num_seqs {
            return Err(ConfigError::BudgetBelowBatch(
                args.max_batched_tokens,
                args.max_num_seqs,
            ));
        }
        let mut names = args.lora.clone();
        names.sort();
        names.dedup();
        if names.len() != args.lora.len() || names.iter().any(|n| n.is_empty() || *n == args.model)
        {
            return Err(ConfigError::Lora(args.lora.clone()));
        }
        // An explicit --token-interval-ms alone keeps the pre-simulator behaviour: streams paced
        // at that interval and whole answers at once (the e2e loads count on it). Any step-cost
        // flag turns the cost model on; unset costs then take the small-GPU defaults.
        let any_cost = args.step_base_us.is_some()
            || args.prefill_us_per_token.is_some()
            || args.decode_us_per_seq.is_some();
        let defaults = StepCost::small_gpu();
        let us = |v: Option<u64>, d: Duration| v.map(Duration::from_micros).unwrap_or(d);
        // Loading an adapter is no step cost the old pacing knew of: it applies either way.
        let lora_load = Duration::from_millis(args.lora_load_ms);
        let cost = if args.token_interval_ms.is_some() && !any_cost {
            StepCost {
                lora_load,
                ..StepCost::default()
            }
        } else {
            StepCost {
                base: us(args.step_base_us, defaults.base),
                prefill_per_token: us(args.prefill_us_per_token, defaults.prefill_per_token),
                decode_per_seq: us(args.decode_us_per_seq, defaults.decode_per_seq),
                lora_load,
            }
        };
        Ok(Self {
            version: args.version.clone(),
            model: args.model.clone(),
            pod,
            token_interval: Duration::from_millis(args.token_interval_ms.unwrap_or(0)),
            latency: Duration::from_millis(args.latency_ms),
            error_rate: args.error_rate,
            error_status,
            shutdown_grace: Duration::from_millis(args.shutdown_grace_ms),
            engine: EngineConfig {
                max_model_len,
                max_num_seqs: at_least_one(args.max_num_seqs, "--max-num-seqs")?,
                max_batched_tokens: at_least_one(args.max_batched_tokens, "--max-batched-tokens")?,
                max_waiting: at_least_one(args.max_waiting, "--max-waiting")?,
                kv_blocks,
                block_size,
                cost,
                loras: args.lora.clone(),
                max_loras: at_least_one(args.max_loras, "--max-loras")?,
                seed: args.seed,
                mode: args.mode,
                mean_output_tokens: args.mean_output_tokens,
            },
        })
    }

    /// Settings for tests and embedding: version `version`, no latency or errors, and the
    /// pre-simulator pacing (steps cost nothing, streams paced at 20 ms per token).
    pub fn new(version: &str) -> Self {
        Self {
            version: version.to_owned(),
            model: "infermesh-demo".to_owned(),
            pod: "local".to_owned(),
            token_interval: Duration::from_millis(20),
            latency: Duration::ZERO,
            error_rate: 0.0,
            error_status: StatusCode::SERVICE_UNAVAILABLE,
            shutdown_grace: Duration::from_secs(5),
            engine: EngineConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("infermesh-model-server").chain(args.iter().copied()))
    }

    #[test]
    fn contract_flags_parse() {
        let args = parse(&[
            "--port",
            "9000",
            "--version",
            "v2",
            "--model",
            "m",
            "--token-interval-ms",
            "5",
            "--latency-ms",
            "7",
            "--error-rate",
            "0.25",
            "--error-status",
            "500",
        ])
        .expect("contract flags parse");
        assert_eq!(args.port, 9000);
        let cfg = Config::from_args(&args, "pod-a".into()).expect("valid");
        assert_eq!(cfg.version, "v2");
        assert_eq!(cfg.model, "m");
        assert_eq!(cfg.pod, "pod-a");
        assert_eq!(cfg.token_interval, Duration::from_millis(5));
        assert_eq!(cfg.latency, Duration::from_millis(7));
        assert_eq!(cfg.error_rate, 0.25);
        assert_eq!(cfg.error_status, StatusCode::INTERNAL_SERVER_ERROR);
        // --token-interval-ms alone: the old pacing, free steps.
        assert_eq!(cfg.engine.cost.base, Duration::ZERO);
        assert_eq!(cfg.engine.cost.decode_per_seq, Duration::ZERO);
    }

    #[test]
    fn defaults_match_contract() {
        let args = parse(&[]).expect("no flags parse");
        assert_eq!(args.port, 8080);
        assert_eq!(args.version, "v1");
        // The old fixed 20 ms pacing gave way to the cost model (~16.5-20 ms per decode step).
        assert_eq!(args.token_interval_ms, None);
        assert_eq!(args.latency_ms, 0);
        assert_eq!(args.error_rate, 0.0);
        assert_eq!(args.error_status, 503);
        let cfg = Config::from_args(&args, String::new()).expect("valid");
        assert_eq!(cfg.token_interval, Duration::ZERO);
        assert_eq!(cfg.engine.cost, StepCost::small_gpu());
        assert_eq!(cfg.engine.max_model_len, 4096);
        assert_eq!(cfg.engine.block_size, 16);
    }

    #[test]
    fn engine_flags_parse() {
        let args = parse(&[
            "--token-interval-ms",
            "50",
            "--decode-us-per-seq",
            "100",
            "--lora",
            "a,b",
            "--max-loras",
            "2",
            "--mode",
            "random",
            "--seed",
            "9",
        ])
        .expect("parses");
        let cfg = Config::from_args(&args, String::new()).expect("valid");
        // A cost flag next to --token-interval-ms: the cost model runs, the interval is a floor.
        assert_eq!(cfg.engine.cost.decode_per_seq, Duration::from_micros(100));
        assert_eq!(cfg.engine.cost.base, StepCost::small_gpu().base);
        assert_eq!(cfg.token_interval, Duration::from_millis(50));
        assert_eq!(cfg.engine.loras, ["a", "b"]);
        assert_eq!(cfg.engine.max_loras, 2);
        assert_eq!(cfg.engine.mode, Mode::Random);
        assert_eq!(cfg.engine.seed, 9);
    }

    #[test]
    fn bad_values_are_rejected() {
        let args = parse(&["--error-rate", "1.5"]).expect("parses");
        assert_eq!(
            Config::from_args(&args, String::new()).unwrap_err(),
            ConfigError::ErrorRate(1.5)
        );
        let args = parse(&["--error-status", "200"]).expect("parses");
        assert_eq!(
            Config::from_args(&args, String::new()).unwrap_err(),
            ConfigError::ErrorStatus(200)
        );
        let args = parse(&["--version", ""]).expect("parses");
        assert!(matches!(
            Config::from_args(&args, String::new()),
            Err(ConfigError::Version(_))
        ));
        assert!(parse(&["--port", "70000"]).is_err());
        let args = parse(&["--kv-blocks", "10", "--max-model-len", "1000"]).expect("parses");
        assert!(matches!(
            Config::from_args(&args, String::new()),
            Err(ConfigError::KvTooSmall { .. })
        ));
        let args = parse(&["--max-num-seqs", "0"]).expect("parses");
        assert!(matches!(
            Config::from_args(&args, String::new()),
            Err(ConfigError::Zero(_))
        ));
        let args = parse(&["--max-batched-tokens", "8"]).expect("parses");
        assert_eq!(
            Config::from_args(&args, String::new()).unwrap_err(),
            ConfigError::BudgetBelowBatch(8, 64)
        );
        let args = parse(&["--lora", "a,a"]).expect("parses");
        assert!(matches!(
            Config::from_args(&args, String::new()),
            Err(ConfigError::Lora(_))
        ));
        let args = parse(&["--step-base-us", "18446744073709551615"]).expect("parses");
        assert!(matches!(
            Config::from_args(&args, String::new()),
            Err(ConfigError::TooLarge("--step-base-us", ..))
        ));
        let args = parse(&["--kv-blocks", "4000000000"]).expect("parses");
        assert!(matches!(
            Config::from_args(&args, String::new()),
            Err(ConfigError::TooLarge("--kv-blocks", ..))
        ));
        let args = parse(&["--mean-output-tokens=-1"]).expect("parses");
        assert!(matches!(
            Config::from_args(&args, String::new()),
            Err(ConfigError::MeanOutput(_))
        ));
    }
}
