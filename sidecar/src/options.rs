//! Command-line flags (each also readable from the environment where Kubernetes provides it).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use std::sync::LazyLock;

use clap::Parser;
use infermesh_crds::mesh::OutlierDetectionConfig;

use crate::endpoint::state::EwmaPolicy;

/// A duration as a flag default (`30ms`, `60s`): the flags' defaults are written once, where the
/// values they stand for are defined, and shown in `--help` as before.
fn flag(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

static EJECT_BASE: LazyLock<String> = LazyLock::new(|| {
    flag(Duration::from_millis(
        OutlierDetectionConfig::DEFAULT_BASE_EJECTION_MS,
    ))
});
static EJECT_MAX: LazyLock<String> = LazyLock::new(|| {
    flag(Duration::from_millis(
        OutlierDetectionConfig::DEFAULT_MAX_EJECTION_MS,
    ))
});
static EWMA_DEFAULT_RTT: LazyLock<String> = LazyLock::new(|| flag(EwmaPolicy::DEFAULT_RTT));
static EWMA_DECAY: LazyLock<String> = LazyLock::new(|| flag(EwmaPolicy::DEFAULT_DECAY));

/// A duration that is not zero (a zero timeout would fail every request).
fn positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be more than 0, e.g. 30s".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e}; write it like 30s or 500ms")),
    }
}

/// Smallest head cap accepted: below it ordinary requests would get 431.
const MIN_HEADER_BYTES: usize = 1 << 10;

/// A head cap of at least [`MIN_HEADER_BYTES`].
fn header_cap(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of bytes, e.g. 65536"))?;
    if n < MIN_HEADER_BYTES {
        return Err(format!(
            "{n} bytes would refuse ordinary requests; give at least {MIN_HEADER_BYTES}"
        ));
    }
    Ok(n)
}

#[derive(Clone, Debug, Parser)]
#[command(
    name = "infermesh-sidecar",
    version,
    about = "infermesh data plane proxy"
)]
pub struct Options {
    /// Listen address for requests to this pod's ModelService.
    #[arg(long, default_value = "0.0.0.0:15006")]
    pub inbound: SocketAddr,
    /// Listen address for the model's calls to other ModelServices (Host or proxy form).
    #[arg(long, default_value = "127.0.0.1:15001")]
    pub outbound: SocketAddr,
    /// Listen address of /ready, /live, /metrics and /config.
    #[arg(long, default_value = "0.0.0.0:15020")]
    pub admin: SocketAddr,
    /// Read the mesh config (JSON) from this file, reloading on change, instead of the Kubernetes API.
    #[arg(long, env = "INFERMESH_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,
    /// How often the config file is checked for changes.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub config_poll_interval: Duration,
    /// Namespace whose ConfigMap infermesh-mesh-config is watched (without --config-file).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// Read the mesh keys (one or two base64 keys, one per line; the first signs) from this file
    /// instead of the Secret infermesh-mesh-key. Without either, routed markers are sent
    /// unsigned and peers' markers are never honoured: each sidecar routes again.
    #[arg(long, env = "INFERMESH_MESH_KEY_FILE")]
    pub mesh_key_file: Option<PathBuf>,
    /// This pod's IP: endpoints at it are delivered to the local model directly.
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<IpAddr>,
    /// Address of the local model: the pod's loopback. Several "pods" on one host (the
    /// benchmarks) give each its own loopback address, 127.0.0.0/8 being all local.
    #[arg(long, default_value = "127.0.0.1")]
    pub model_host: IpAddr,
    /// Grace period for in-flight requests on SIGTERM/SIGINT.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Upstream TCP connect timeout.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Consecutive failures that eject an endpoint (0 disables ejection).
    #[arg(long, default_value_t = OutlierDetectionConfig::DEFAULT_CONSECUTIVE_FAILURES)]
    pub eject_after: u32,
    /// First ejection time; doubles per repeated ejection.
    #[arg(long, default_value = EJECT_BASE.as_str(), value_parser = humantime::parse_duration)]
    pub eject_base: Duration,
    /// Longest ejection time.
    #[arg(long, default_value = EJECT_MAX.as_str(), value_parser = humantime::parse_duration)]
    pub eject_max: Duration,
    /// PeakEWMA latency estimate of an endpoint before any response.
    #[arg(long, default_value = EWMA_DEFAULT_RTT.as_str(), value_parser = humantime::parse_duration)]
    pub ewma_default_rtt: Duration,
    /// PeakEWMA decay time constant.
    #[arg(long, default_value = EWMA_DECAY.as_str(), value_parser = humantime::parse_duration)]
    pub ewma_decay: Duration,
    /// Most bytes of request bodies kept for retries at once, over all requests; a body that
    /// does not fit is sent once, without retries (counted in
    /// infermesh_replay_pool_full_total).
    #[arg(long, default_value_t = 64 << 20)]
    pub replay_buffer_bytes: usize,
    /// Longest silence between two chunks of a client's request body; then 408.
    #[arg(long, default_value = "30s", value_parser = positive_duration)]
    pub request_body_timeout: Duration,
    /// Largest request head accepted, in bytes (request line and headers; HTTP/2: the header
    /// list). Larger ones get 431 (HTTP/1.1) or a refused stream (HTTP/2).
    #[arg(long, default_value_t = 64 << 10, value_parser = header_cap)]
    pub max_header_bytes: usize,
    /// The admin port of peer sidecars, where an idle peer is asked for its load (`/load`).
    #[arg(long, default_value_t = 15020)]
    pub peer_admin_port: u16,
    /// Prompt blocks (256 bytes each) the prefix index of InferenceAware remembers, over all
    /// services; about 80 bytes each.
    #[arg(long, default_value_t = crate::routing::affinity::DEFAULT_BLOCKS)]
    pub prefix_index_blocks: usize,
    /// Worker threads (0: one per CPU; 1: a single-threaded runtime).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
}

#[cfg(any(test, feature = "test-util"))]
impl Options {
    /// Defaults with loopback ephemeral ports, for tests (the `test-util` feature).
    pub fn loopback(config_file: PathBuf) -> Self {
        let mut o = Options::parse_from(["infermesh-sidecar"]);
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        o.inbound = any;
        o.outbound = any;
        o.admin = any;
        o.config_file = Some(config_file);
        o.mesh_key_file = None;
        o.namespace = None;
        o.pod_ip = None;
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_that_would_fail_every_request_are_refused_with_a_reason() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["infermesh-sidecar"];
            argv.extend_from_slice(args);
            Options::try_parse_from(argv).map_err(|e| e.to_string())
        };
        let e = parse(&["--request-body-timeout", "0s"]).unwrap_err();
        assert!(e.contains("must be more than 0"), "{e}");
        let e = parse(&["--max-header-bytes", "100"]).unwrap_err();
        assert!(e.contains("at least 1024"), "{e}");
        let e = parse(&["--max-header-bytes", "lots"]).unwrap_err();
        assert!(e.contains("not a number of bytes"), "{e}");
        let o = parse(&["--request-body-timeout", "5s", "--max-header-bytes", "8192"]).unwrap();
        assert_eq!(o.request_body_timeout, Duration::from_secs(5));
        assert_eq!(o.max_header_bytes, 8192);
    }

    /// The flags default to the mesh contract's and the balancer's own defaults, shown as before.
    #[test]
    fn flag_defaults_are_the_policies_defaults() {
        let o = Options::parse_from(["infermesh-sidecar"]);
        let ejection = crate::endpoint::state::EjectionPolicy::default();
        assert_eq!(o.eject_after, ejection.consecutive_failures);
        assert_eq!(o.eject_base, ejection.backoff.base);
        assert_eq!(o.eject_max, ejection.backoff.max);
        assert_eq!(o.ewma_default_rtt, EwmaPolicy::DEFAULT_RTT);
        assert_eq!(o.ewma_decay, EwmaPolicy::DEFAULT_DECAY);
        assert_eq!(
            [&*EJECT_BASE, &*EJECT_MAX, &*EWMA_DEFAULT_RTT, &*EWMA_DECAY],
            ["1s", "60s", "30ms", "10s"]
        );
    }
}
