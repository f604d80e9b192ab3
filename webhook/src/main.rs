//! `infermesh-webhook`: the sidecar-injection admission webhook. Flags (or `INFERMESH_WEBHOOK_*`
//! env vars) choose the listen address, the certificate source, and what gets injected.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use infermesh_webhook::certs::{CertManager, CertPolicy, CertSource};
use infermesh_webhook::inject::{InjectorConfig, ProxyResources};
use infermesh_webhook::metrics::Metrics;
use infermesh_webhook::namespaces::NamespaceCache;
use infermesh_webhook::server::{self, AppState};
use infermesh_webhook::tls::{self, CertResolver};
use kube::Api;

#[derive(Parser, Debug)]
#[command(
    name = "infermesh-webhook",
    version,
    about = "infermesh sidecar-injection admission webhook"
)]
struct Args {
    /// Address to serve HTTPS on.
    #[arg(long, env = "INFERMESH_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Namespace the webhook runs in (its Service and certificate Secret live there).
    #[arg(long, env = "POD_NAMESPACE", default_value = "infermesh-system")]
    namespace: String,
    /// Name of the webhook's Service; its DNS names go in the serving certificate.
    #[arg(
        long,
        env = "INFERMESH_WEBHOOK_SERVICE",
        default_value = "infermesh-webhook"
    )]
    service_name: String,
    /// More names or IP addresses for the certificate (local mode: the node IP), comma-separated.
    #[arg(long, env = "INFERMESH_WEBHOOK_EXTRA_SAN", value_delimiter = ',')]
    extra_san: Vec<String>,
    /// MutatingWebhookConfiguration whose caBundle the webhook keeps in step.
    #[arg(
        long,
        env = "INFERMESH_WEBHOOK_CONFIG",
        default_value = "infermesh-webhook"
    )]
    webhook_config: String,
    /// Leave caBundle alone (e.g. when cert-manager's CA injector sets it).
    #[arg(long, env = "INFERMESH_WEBHOOK_SKIP_CA_BUNDLE")]
    skip_ca_bundle: bool,
    /// Secret where the webhook keeps its own CA and serving certificate.
    #[arg(
        long,
        env = "INFERMESH_WEBHOOK_CERT_SECRET",
        default_value = "infermesh-webhook-certs"
    )]
    cert_secret: String,
    /// A user-provided kubernetes.io/tls Secret (tls.crt, tls.key, ca.crt), e.g. from cert-manager;
    /// takes precedence over the self-managed certificate.
    #[arg(long, env = "INFERMESH_WEBHOOK_TLS_SECRET")]
    tls_secret: Option<String>,
    /// User-provided certificate file (with --tls-key-file); takes precedence over everything.
    #[arg(
        long,
        env = "INFERMESH_WEBHOOK_TLS_CERT_FILE",
        requires = "tls_key_file"
    )]
    tls_cert_file: Option<PathBuf>,
    #[arg(
        long,
        env = "INFERMESH_WEBHOOK_TLS_KEY_FILE",
        requires = "tls_cert_file"
    )]
    tls_key_file: Option<PathBuf>,
    /// CA bundle to put in caBundle with --tls-cert-file.
    #[arg(long, env = "INFERMESH_WEBHOOK_TLS_CA_FILE")]
    tls_ca_file: Option<PathBuf>,
    /// Keep the self-managed CA and certificate in this directory instead of a Secret.
    #[arg(long, env = "INFERMESH_WEBHOOK_CERT_DIR")]
    cert_dir: Option<PathBuf>,
    #[arg(long, env = "INFERMESH_WEBHOOK_CERT_VALIDITY", default_value = "365d", value_parser = humantime::parse_duration)]
    cert_validity: Duration,
    #[arg(long, env = "INFERMESH_WEBHOOK_CA_VALIDITY", default_value = "3650d", value_parser = humantime::parse_duration)]
    ca_validity: Duration,
    /// Renew the serving certificate this long before it expires.
    #[arg(long, env = "INFERMESH_WEBHOOK_CERT_RENEW_BEFORE", default_value = "30d", value_parser = humantime::parse_duration)]
    cert_renew_before: Duration,
    /// How often to re-read the certificate source (rotation, other replicas' renewals).
    #[arg(long, env = "INFERMESH_WEBHOOK_CERT_CHECK_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    cert_check_interval: Duration,
    /// Sidecar image.
    #[arg(
        long,
        env = "INFERMESH_PROXY_IMAGE",
        default_value = "infermesh/sidecar:0.1.0"
    )]
    proxy_image: String,
    #[arg(
        long,
        env = "INFERMESH_PROXY_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    proxy_image_pull_policy: String,
    #[arg(long, env = "INFERMESH_PROXY_CPU", default_value = "50m")]
    proxy_cpu: String,
    #[arg(long, env = "INFERMESH_PROXY_MEMORY", default_value = "32Mi")]
    proxy_memory: String,
    #[arg(long, env = "INFERMESH_PROXY_CPU_LIMIT")]
    proxy_cpu_limit: Option<String>,
    #[arg(long, env = "INFERMESH_PROXY_MEMORY_LIMIT", default_value = "256Mi")]
    proxy_memory_limit: String,
    /// Namespaces never injected (the webhook's own is always added).
    #[arg(
        long,
        env = "INFERMESH_WEBHOOK_SYSTEM_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system,infermesh-system"
    )]
    system_namespace: Vec<String>,
    /// Watch only namespaces matching this label selector (others count as not enabled).
    #[arg(long, env = "INFERMESH_WEBHOOK_NAMESPACE_SELECTOR")]
    namespace_selector: Option<String>,
    /// Mirror the namespace annotation infermesh.io/inject=enabled onto the label of the same name.
    #[arg(long, env = "INFERMESH_WEBHOOK_MIRROR_LABEL", default_value_t = true, action = clap::ArgAction::Set)]
    mirror_namespace_label: bool,
    /// Run without a cluster: certificates from files or --cert-dir, namespaces from
    /// --standalone-inject-namespace. For development and benchmarks.
    #[arg(long)]
    standalone: bool,
    /// In standalone mode, the namespaces to treat as annotated infermesh.io/inject=enabled.
    #[arg(long, value_delimiter = ',')]
    standalone_inject_namespace: Vec<String>,
    /// Log as JSON lines.
    #[arg(long, env = "INFERMESH_LOG_JSON")]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    // One process-wide provider, whatever else the dependency tree enables.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), listen = %args.listen, "infermesh-webhook starting");

    let client = if args.standalone {
        None
    } else {
        Some(kube::Client::try_default().await.context(
            "connecting to Kubernetes failed: set KUBECONFIG or run in a pod (or use --standalone)",
        )?)
    };
    let source = cert_source(&args, client.as_ref())?;
    let mut sans = vec![
        args.service_name.clone(),
        format!("{}.{}", args.service_name, args.namespace),
        format!("{}.{}.svc", args.service_name, args.namespace),
        format!("{}.{}.svc.cluster.local", args.service_name, args.namespace),
    ];
    sans.extend(args.extra_san.iter().filter(|s| !s.is_empty()).cloned());
    let resolver = Arc::new(CertResolver::default());
    let certs = CertManager {
        source,
        policy: CertPolicy {
            sans,
            validity: args.cert_validity,
            ca_validity: args.ca_validity,
            renew_before: args.cert_renew_before,
        },
        webhook_config: match (&client, args.skip_ca_bundle) {
            (Some(c), false) => Some((c.clone(), args.webhook_config.clone())),
            _ => None,
        },
        resolver: resolver.clone(),
    };
    let metrics = Metrics::default();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match certs.refresh().await {
            Ok(not_after) => {
                metrics.set_cert_expiry(not_after);
                break;
            }
            Err(e) if attempt < 5 => {
                tracing::warn!(error = %e, attempt, "loading the serving certificate failed; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => bail!("loading the serving certificate failed after {attempt} attempts: {e}"),
        }
    }

    let namespaces = match &client {
        None => NamespaceCache::standalone(args.standalone_inject_namespace.clone()),
        Some(c) => {
            let (cache, driver) = NamespaceCache::watch(
                c.clone(),
                args.namespace_selector.clone(),
                args.mirror_namespace_label,
            );
            tokio::spawn(driver);
            cache
        }
    };
    let mut system_namespaces = args.system_namespace.clone();
    if !system_namespaces.contains(&args.namespace) {
        system_namespaces.push(args.namespace.clone());
    }
    let injector = InjectorConfig {
        image: args.proxy_image.clone(),
        image_pull_policy: args.proxy_image_pull_policy.clone(),
        resources: ProxyResources {
            cpu_request: args.proxy_cpu.clone(),
            memory_request: args.proxy_memory.clone(),
            cpu_limit: args.proxy_cpu_limit.clone(),
            memory_limit: Some(args.proxy_memory_limit.clone()).filter(|s| !s.is_empty()),
        },
        system_namespaces,
    };
    let state = Arc::new(AppState {
        injector,
        namespaces,
        metrics,
        resolver: resolver.clone(),
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let rotation = {
        let state = state.clone();
        let mut stop = stop_rx.clone();
        let interval = args.cert_check_interval;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    _ = stop.changed() => return,
                }
                match certs.refresh().await {
                    Ok(t) => state.metrics.set_cert_expiry(t),
                    Err(e) => {
                        tracing::warn!(error = %e, "certificate refresh failed; keeping the current one")
                    }
                }
            }
        })
    };

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {} failed: is the port in use?", args.listen))?;
    let tls = Arc::new(tls::server_config(resolver)?);
    tracing::info!(addr = %listener.local_addr()?, "serving /mutate, /healthz, /metrics");
    server::serve(listener, tls, state, shutdown_signal()).await;
    let _ = stop_tx.send(true);
    let _ = rotation.await;
    tracing::info!("stopped");
    Ok(())
}

fn cert_source(args: &Args, client: Option<&kube::Client>) -> anyhow::Result<CertSource> {
    if let (Some(cert), Some(key)) = (&args.tls_cert_file, &args.tls_key_file) {
        return Ok(CertSource::Files {
            cert: cert.clone(),
            key: key.clone(),
            ca: args.tls_ca_file.clone(),
        });
    }
    if let Some(dir) = &args.cert_dir {
        return Ok(CertSource::ManagedDir { dir: dir.clone() });
    }
    let Some(client) = client else {
        bail!("--standalone needs --cert-dir or --tls-cert-file/--tls-key-file");
    };
    let api = Api::namespaced(client.clone(), &args.namespace);
    let namespace = args.namespace.clone();
    Ok(match &args.tls_secret {
        Some(name) => CertSource::UserSecret {
            api,
            namespace,
            name: name.clone(),
        },
        None => CertSource::ManagedSecret {
            api,
            namespace,
            name: args.cert_secret.clone(),
        },
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = ctrl_c => tracing::info!("interrupt received"),
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
