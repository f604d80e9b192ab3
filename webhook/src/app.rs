//! The webhook process: flags (or `INFERMESH_WEBHOOK_*` env vars) and the wiring of certificate
//! management, namespace cache, injector config and HTTPS server. `main` parses and calls [`run`];
//! tests call it the same way to run the webhook in-process.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use kube::Api;

use crate::certs::{CertManager, CertPolicy, CertSource, CertsError};
use crate::inject::{InjectorConfig, ProxyResources};
use crate::metrics::Metrics;
use crate::namespaces::NamespaceCache;
use crate::server::{self, AppState};
use crate::tls::{self, CertResolver};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(
        "connecting to Kubernetes failed: set KUBECONFIG or run in a pod (or use --standalone): {0}"
    )]
    Kube(kube::Error),
    #[error("loading the serving certificate failed after {0} attempts: {1}")]
    Certs(u32, CertsError),
    #[error("--standalone needs --cert-dir or --tls-cert-file/--tls-key-file")]
    NoCertSource,
    #[error("binding {0} failed (is the port in use?): {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("invalid flags: {0}")]
    Flags(String),
    #[error("TLS setup failed: {0}")]
    Tls(rustls::Error),
}

#[derive(Parser, Debug)]
#[command(
    name = "infermesh-webhook",
    version,
    about = "infermesh sidecar-injection admission webhook"
)]
pub struct Args {
    /// Address to serve HTTPS on.
    #[arg(long, env = "INFERMESH_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Namespace the webhook runs in (its Service and certificate Secret live there).
    #[arg(long, env = "POD_NAMESPACE", default_value = "infermesh-system")]
    pub namespace: String,
    /// Name of the webhook's Service; its DNS names go in the serving certificate.
    #[arg(
        long,
        env = "INFERMESH_WEBHOOK_SERVICE",
        default_value = "infermesh-webhook"
    )]
    pub service_name: String,
    /// More names or IP addresses for the certificate (local mode: the node IP), comma-separated.
    #[arg(long, env = "INFERMESH_WEBHOOK_EXTRA_SAN", value_delimiter = ',')]
    pub extra_san: Vec<String>,
    /// MutatingWebhookConfiguration whose caBundle the webhook keeps in step.
    #[arg(
        long,
        env = "INFERMESH_WEBHOOK_CONFIG",
        default_value = "infermesh-webhook"
    )]
    pub webhook_config: String,
    /// Leave caBundle alone (e.g. when cert-manager's CA injector sets it).
    #[arg(long, env = "INFERMESH_WEBHOOK_SKIP_CA_BUNDLE")]
    pub skip_ca_bundle: bool,
    /// Secret where the webhook keeps its own CA and serving certificate.
    #[arg(
        long,
        env = "INFERMESH_WEBHOOK_CERT_SECRET",
        default_value = "infermesh-webhook-certs"
    )]
    pub cert_secret: String,
    /// A user-provided kubernetes.io/tls Secret (tls.crt, tls.key, ca.crt), e.g. from cert-manager;
    /// takes precedence over the self-managed certificate.
    #[arg(long, env = "INFERMESH_WEBHOOK_TLS_SECRET")]
    pub tls_secret: Option<String>,
    /// User-provided certificate file (with --tls-key-file); takes precedence over everything.
    #[arg(
        long,
        env = "INFERMESH_WEBHOOK_TLS_CERT_FILE",
        requires = "tls_key_file"
    )]
    pub tls_cert_file: Option<PathBuf>,
    #[arg(
        long,
        env = "INFERMESH_WEBHOOK_TLS_KEY_FILE",
        requires = "tls_cert_file"
    )]
    pub tls_key_file: Option<PathBuf>,
    /// CA bundle to put in caBundle with --tls-cert-file.
    #[arg(long, env = "INFERMESH_WEBHOOK_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// Keep the self-managed CA and certificate in this directory instead of a Secret.
    #[arg(long, env = "INFERMESH_WEBHOOK_CERT_DIR")]
    pub cert_dir: Option<PathBuf>,
    #[arg(long, env = "INFERMESH_WEBHOOK_CERT_VALIDITY", default_value = "365d", value_parser = humantime::parse_duration)]
    pub cert_validity: Duration,
    #[arg(long, env = "INFERMESH_WEBHOOK_CA_VALIDITY", default_value = "3650d", value_parser = humantime::parse_duration)]
    pub ca_validity: Duration,
    /// Renew the serving certificate this long before it expires.
    #[arg(long, env = "INFERMESH_WEBHOOK_CERT_RENEW_BEFORE", default_value = "30d", value_parser = humantime::parse_duration)]
    pub cert_renew_before: Duration,
    /// How often to re-read the certificate source (rotation, other replicas' renewals).
    #[arg(long, env = "INFERMESH_WEBHOOK_CERT_CHECK_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    pub cert_check_interval: Duration,
    /// Sidecar image.
    #[arg(
        long,
        env = "INFERMESH_PROXY_IMAGE",
        default_value = "infermesh/sidecar:0.1.0"
    )]
    pub proxy_image: String,
    #[arg(
        long,
        env = "INFERMESH_PROXY_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    pub proxy_image_pull_policy: String,
    #[arg(long, env = "INFERMESH_PROXY_CPU", default_value = "50m")]
    pub proxy_cpu: String,
    #[arg(long, env = "INFERMESH_PROXY_MEMORY", default_value = "32Mi")]
    pub proxy_memory: String,
    #[arg(long, env = "INFERMESH_PROXY_CPU_LIMIT")]
    pub proxy_cpu_limit: Option<String>,
    #[arg(long, env = "INFERMESH_PROXY_MEMORY_LIMIT", default_value = "256Mi")]
    pub proxy_memory_limit: String,
    /// Namespaces never injected (the webhook's own is always added).
    #[arg(
        long,
        env = "INFERMESH_WEBHOOK_SYSTEM_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system,infermesh-system"
    )]
    pub system_namespace: Vec<String>,
    /// Watch only namespaces matching this label selector (the webhook configuration should
    /// select the same ones: a namespace missing from the cache costs one GET per review).
    #[arg(long, env = "INFERMESH_WEBHOOK_NAMESPACE_SELECTOR")]
    pub namespace_selector: Option<String>,
    /// Mirror the namespace annotation infermesh.io/inject=enabled onto the label of the same name.
    #[arg(long, env = "INFERMESH_WEBHOOK_MIRROR_LABEL", default_value_t = true, action = clap::ArgAction::Set)]
    pub mirror_namespace_label: bool,
    /// Run without a cluster: certificates from files or --cert-dir, namespaces from
    /// --standalone-inject-namespace. For development and benchmarks.
    #[arg(long)]
    pub standalone: bool,
    /// In standalone mode, the namespaces to treat as annotated infermesh.io/inject=enabled.
    #[arg(long, value_delimiter = ',')]
    pub standalone_inject_namespace: Vec<String>,
    /// Log as JSON lines.
    #[arg(long, env = "INFERMESH_LOG_JSON")]
    pub log_json: bool,
}

/// Runs the webhook until `shutdown` completes, then drains and returns.
pub async fn run(args: Args, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
    let client = if args.standalone {
        None
    } else {
        Some(kube::Client::try_default().await.map_err(AppError::Kube)?)
    };
    run_with_client(args, client, shutdown).await
}

/// [`run`] with a given client (`None`: standalone), e.g. one acting as the webhook's
/// ServiceAccount.
pub async fn run_with_client(
    args: Args,
    client: Option<kube::Client>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    if args.ca_validity <= args.cert_validity.saturating_add(args.cert_renew_before) {
        return Err(AppError::Flags(
            "--ca-validity must exceed --cert-validity plus --cert-renew-before (the CA must outlive what it signs)".into(),
        ));
    }
    if args.cert_renew_before >= args.cert_validity {
        return Err(AppError::Flags(
            "--cert-renew-before must be shorter than --cert-validity".into(),
        ));
    }
    // Bind first: a taken port fails the start at once.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| AppError::Bind(args.listen, e))?;
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
            Err(e) => return Err(AppError::Certs(attempt, e)),
        }
    }

    let mut watch_task = None;
    let namespaces = match &client {
        None => NamespaceCache::standalone(args.standalone_inject_namespace.clone()),
        Some(c) => {
            let (cache, driver) = NamespaceCache::watch(
                c.clone(),
                args.namespace_selector.clone(),
                args.mirror_namespace_label,
            );
            watch_task = Some(tokio::spawn(driver));
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

    let tls = Arc::new(tls::server_config(resolver).map_err(AppError::Tls)?);
    tracing::info!(addr = %args.listen, "serving /mutate, /live, /ready, /metrics");
    server::serve(listener, tls, state, shutdown).await;
    let _ = stop_tx.send(true);
    let _ = rotation.await;
    if let Some(t) = watch_task {
        t.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

fn cert_source(args: &Args, client: Option<&kube::Client>) -> Result<CertSource, AppError> {
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
        return Err(AppError::NoCertSource);
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
