//! The HTTPS server over loopback: reviews, bad input, health, metrics, certificate rotation
//! without a restart, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, StatusCode};
use rustls::pki_types::ServerName;
use serde_json::{Value, json};

use crate::certs::{CertManager, CertPolicy, CertSource};
use crate::client::Connection;
use crate::inject::InjectorConfig;
use crate::metrics::Metrics;
use crate::namespaces::NamespaceCache;
use crate::server::{AppState, serve};
use crate::tls::{self, CertResolver};

const NAME: &str = "infermesh-webhook.infermesh-system.svc";

struct Running {
    addr: SocketAddr,
    ca: String,
    certs: CertManager,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    dir: std::path::PathBuf,
}

async fn start(tag: &str, policy: CertPolicy) -> Running {
    let dir = std::env::temp_dir().join(format!(
        "infermesh-webhook-srv-{tag}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let resolver = Arc::new(CertResolver::default());
    let certs = CertManager {
        source: CertSource::ManagedDir { dir: dir.clone() },
        policy,
        webhook_config: None,
        resolver: resolver.clone(),
    };
    certs.refresh().await.expect("certificate");
    let ca = std::fs::read_to_string(dir.join("ca.crt")).expect("ca");
    let state = Arc::new(AppState {
        injector: InjectorConfig::default(),
        namespaces: NamespaceCache::standalone(vec!["ml".into()]),
        metrics: Metrics::default(),
        resolver: resolver.clone(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cfg = Arc::new(tls::server_config(resolver).expect("tls config"));
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, cfg, state, async move {
        let _ = rx.await;
    }));
    Running {
        addr,
        ca,
        certs,
        stop,
        task,
        dir,
    }
}

fn policy() -> CertPolicy {
    CertPolicy {
        sans: vec![NAME.into(), "127.0.0.1".into()],
        validity: Duration::from_secs(3600),
        ca_validity: Duration::from_secs(86_400 * 30),
        renew_before: Duration::from_secs(60),
    }
}

fn review(namespace: &str) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u-1", "kind": { "group": "", "version": "v1", "kind": "Pod" },
                "resource": { "group": "", "version": "v1", "resource": "pods" },
                "namespace": namespace, "operation": "CREATE", "userInfo": {},
                "object": { "apiVersion": "v1", "kind": "Pod", "metadata": {},
                            "spec": { "containers": [{ "name": "m", "image": "m" }] } },
                "oldObject": null,
            }
        }))
        .expect("json"),
    )
}

/// Posts a review of a pod in `namespace`; the answer must be 200 with a JSON body.
async fn reviewed(c: &mut Connection, namespace: &str) -> Value {
    let (status, body) = c
        .send(Method::POST, "/mutate", review(namespace))
        .await
        .expect("review");
    assert_eq!(status, StatusCode::OK);
    serde_json::from_slice(&body).expect("json")
}

#[tokio::test]
async fn answers_reviews_health_metrics_and_bad_input() {
    let run = start("main", policy()).await;
    let mut c = Connection::open(run.addr, NAME, &run.ca)
        .await
        .expect("connect");

    let v = reviewed(&mut c, "ml").await;
    assert_eq!(v["response"]["uid"], "u-1");
    assert_eq!(v["response"]["patchType"], "JSONPatch");

    let v = reviewed(&mut c, "default").await;
    assert_eq!(v["response"]["allowed"], true);

    let (status, body) = c
        .send(Method::POST, "/mutate", Bytes::from_static(b"{not json"))
        .await
        .expect("bad");
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("not an admission.k8s.io/v1 AdmissionReview"));

    let (status, _) = c
        .send(Method::GET, "/mutate", Bytes::new())
        .await
        .expect("get");
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = c
        .send(Method::GET, "/nope", Bytes::new())
        .await
        .expect("404");
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = c
        .send(Method::GET, "/ready", Bytes::new())
        .await
        .expect("ready");
    assert_eq!(
        (status, body),
        (StatusCode::OK, Bytes::from_static(b"ready\n"))
    );
    let (status, body) = c
        .send(Method::GET, "/live", Bytes::new())
        .await
        .expect("live");
    assert_eq!(
        (status, body),
        (StatusCode::OK, Bytes::from_static(b"live\n"))
    );

    let (status, body) = c
        .send(Method::GET, "/metrics", Bytes::new())
        .await
        .expect("metrics");
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&body);
    for want in [
        "infermesh_webhook_reviews_total{decision=\"injected\"} 1",
        "infermesh_webhook_reviews_total{decision=\"skipped_namespace_not_enabled\"} 1",
        "infermesh_webhook_reviews_total{decision=\"bad_request\"} 1",
        "infermesh_webhook_review_duration_seconds_count 3",
    ] {
        assert!(text.contains(want), "missing {want} in\n{text}");
    }
    let _ = run.stop.send(());
    tokio::time::timeout(Duration::from_secs(15), run.task)
        .await
        .expect("stops")
        .expect("joins");
    let _ = std::fs::remove_dir_all(&run.dir);
}

async fn served_cert(addr: SocketAddr, ca: &str) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::pem::PemObject::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.expect("pem")).expect("root");
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(NAME).expect("name"), tcp)
        .await
        .expect("handshake");
    tls.get_ref().1.peer_certificates().expect("certs")[0].to_vec()
}

#[tokio::test]
async fn rotation_takes_effect_without_restart() {
    // Renew-before longer than the validity: every refresh issues a new certificate.
    let mut p = policy();
    p.renew_before = Duration::from_secs(7200);
    let run = start("rotate", p).await;
    let first = served_cert(run.addr, &run.ca).await;
    let mut open = Connection::open(run.addr, NAME, &run.ca)
        .await
        .expect("connect");
    let not_after = run.certs.refresh().await.expect("refresh");
    assert!(not_after > SystemTime::now());
    let second = served_cert(run.addr, &run.ca).await;
    assert_ne!(first, second, "new handshakes see the renewed certificate");
    // A connection opened before the swap keeps working.
    let (status, _) = open
        .send(Method::GET, "/ready", Bytes::new())
        .await
        .expect("old conn");
    assert_eq!(status, StatusCode::OK);
    let _ = run.stop.send(());
    tokio::time::timeout(Duration::from_secs(15), run.task)
        .await
        .expect("stops")
        .expect("joins");
    let _ = std::fs::remove_dir_all(&run.dir);
}

#[tokio::test]
async fn untrusted_clients_fail_the_handshake() {
    let run = start("untrusted", policy()).await;
    let (other_ca, _) = tls::generate_ca(SystemTime::now(), Duration::from_secs(3600)).expect("ca");
    assert!(Connection::open(run.addr, NAME, &other_ca).await.is_err());
    assert!(
        Connection::open(run.addr, "wrong.name", &run.ca)
            .await
            .is_err()
    );
    let _ = run.stop.send(());
    let _ = run.task.await;
    let _ = std::fs::remove_dir_all(&run.dir);
}
