//! `infermesh-operator`: reconciles ModelServices into the mesh config, Services and RBAC the
//! sidecars need. Runs in a cluster (service account) or outside one (`KUBECONFIG`).

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::Context as _;
use clap::Parser;
use infermesh_crds::ModelService;
use kube::{
    Api, Client,
    api::ListParams,
    runtime::events::{Recorder, Reporter},
};

mod admin;
mod backoff;
mod config;
mod controller;
mod endpoints;
mod error;
#[cfg(test)]
mod fixtures;
mod lease;
mod meshing;
mod metrics;
mod overlap;
mod ownership;
mod resources;
mod screening;
mod sidecars;
mod status;

#[derive(Parser, Debug)]
#[command(
    name = "infermesh-operator",
    version,
    about = "Reconciles infermesh ModelServices"
)]
struct Args {
    /// Address of the admin server (/live, /ready, /metrics).
    #[arg(long, env = "INFERMESH_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    admin_addr: SocketAddr,
    /// Watch only this namespace (default: every namespace).
    #[arg(long, env = "INFERMESH_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Run without leader election (a single replica).
    #[arg(long)]
    no_leader_election: bool,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "infermesh-system")]
    lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "infermesh-operator")]
    lease_name: String,
    /// Lease duration in seconds: a leader that has not renewed for this long is replaced.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// Identity in the Lease and in Events (default: the pod name, else host name and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// ModelServices reconciled at once.
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "INFERMESH_LOG_JSON")]
    log_json: bool,
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube_runtime::controller=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn default_identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "infermesh-operator".into());
    format!("{host}-{}", std::process::id())
}

/// Fails with an install hint when the ModelService CRD is not served.
async fn check_crd(client: &Client, namespace: Option<&str>) -> anyhow::Result<()> {
    let api: Api<ModelService> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => anyhow::bail!(
            "the ModelService CRD (modelservices.infermesh.io) is not installed: \
             run `kubectl apply -f deploy/crds/modelservice.yaml` and start the operator again"
        ),
        Err(e) => Err(e).context("listing ModelServices failed: check the kubeconfig and RBAC"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_json);
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    tracing::info!(version = env!("CARGO_PKG_VERSION"), %identity, namespace = ?args.namespace, "infermesh-operator starting");

    let health = Arc::new(admin::Health::default());
    let metrics = Arc::new(metrics::Metrics::default());
    let admin_router = admin::router(health.clone(), metrics.clone());
    let listener_addr = args.admin_addr;
    let admin_task = tokio::spawn(async move { admin::serve(listener_addr, admin_router).await });

    let client = Client::try_default()
        .await
        .context("no Kubernetes configuration: run in a cluster or set KUBECONFIG")?;
    check_crd(&client, args.namespace.as_deref()).await?;
    health.started.store(true, Ordering::Relaxed);

    let elector = (!args.no_leader_election).then(|| {
        lease::LeaderElector::new(
            client.clone(),
            &args.lease_namespace,
            &args.lease_name,
            &identity,
            Duration::from_secs(args.lease_seconds.max(3)),
        )
    });
    let mut shutdown = Box::pin(infermesh_admin::shutdown_signal());
    if let Some(e) = &elector {
        tokio::select! {
            _ = e.acquire(Duration::from_secs(2)) => {},
            _ = &mut shutdown => { tracing::info!("stopped before becoming leader"); return Ok(()); }
        }
        tracing::info!(lease = %args.lease_name, namespace = %args.lease_namespace, "became leader");
    }
    health.leading.store(true, Ordering::Relaxed);
    metrics.leader.set(1);

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: resources::MANAGER.into(),
            instance: Some(identity.clone()),
        },
    );
    let scope = controller::Scope {
        namespace: args.namespace.clone(),
        concurrency: args.concurrency.max(1),
    };

    // Stop on a signal, or when leadership is lost (another replica may already be reconciling).
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
    if let Some(e) = elector.clone() {
        tokio::spawn(async move {
            e.hold().await;
            let _ = lost_tx.send(());
        });
    }
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lost_flag = lost.clone();
    let stop = async move {
        tokio::select! {
            signal = shutdown => tracing::info!(%signal, "shutdown signal received"),
            Ok(()) = lost_rx => lost_flag.store(true, Ordering::Relaxed),
        }
    };
    let controller = controller::run(client.clone(), scope, recorder, metrics.clone(), stop);
    tokio::select! {
        _ = controller => {},
        res = admin_task => {
            health.failed.store(true, Ordering::Relaxed);
            anyhow::bail!("admin server stopped: {res:?}");
        }
    }
    metrics.leader.set(0);
    health.leading.store(false, Ordering::Relaxed);
    if lost.load(Ordering::Relaxed) {
        health.failed.store(true, Ordering::Relaxed);
        anyhow::bail!("leadership lost; exiting so a restart rejoins the election");
    }
    if let Some(e) = &elector {
        e.release().await;
    }
    tracing::info!("infermesh-operator stopped");
    Ok(())
}
