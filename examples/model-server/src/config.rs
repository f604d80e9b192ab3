//! Command-line flags of `infermesh-model-server` and the validated settings they produce.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use clap::Parser;
use http::StatusCode;

/// Flags, as documented in the project's example CLI contract.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "infermesh-model-server",
    about = "Sample OpenAI-compatible inference server: deterministic tokens, injectable latency and errors",
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
    /// Model name reported in answers.
    #[arg(long, default_value = "infermesh-demo")]
    pub model: String,
    /// Pause between two streamed tokens, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub token_interval_ms: u64,
    /// Extra delay before answering any request except /health, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Fraction of requests (except /health) answered with --error-status, 0.0 to 1.0.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// HTTP status of injected errors.
    #[arg(long, default_value_t = 503)]
    pub error_status: u16,
    /// Longest wait for in-flight requests after SIGTERM, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub shutdown_grace_ms: u64,
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
}

/// Validated settings the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub version: String,
    pub model: String,
    pub pod: String,
    pub token_interval: Duration,
    pub latency: Duration,
    pub error_rate: f64,
    pub error_status: StatusCode,
    pub shutdown_grace: Duration,
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
        Ok(Self {
            version: args.version.clone(),
            model: args.model.clone(),
            pod,
            token_interval: Duration::from_millis(args.token_interval_ms),
            latency: Duration::from_millis(args.latency_ms),
            error_rate: args.error_rate,
            error_status,
            shutdown_grace: Duration::from_millis(args.shutdown_grace_ms),
        })
    }

    /// Settings for tests and embedding: version `version`, no latency or errors.
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
    }

    #[test]
    fn defaults_match_contract() {
        let args = parse(&[]).expect("no flags parse");
        assert_eq!(args.port, 8080);
        assert_eq!(args.version, "v1");
        assert_eq!(args.token_interval_ms, 20);
        assert_eq!(args.latency_ms, 0);
        assert_eq!(args.error_rate, 0.0);
        assert_eq!(args.error_status, 503);
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
    }
}
