//! What the sidecars of a ModelService's serving pods enforce: each one's mesh config revision,
//! read from its admin port, and the summary its status reports (`Ready` only once they all run a
//! config that carries the ModelService's current entry).
//!
//! Why the operator asks rather than the sidecars telling: a sidecar runs under the pod's service
//! account, which the model container shares, so giving it the right to patch pods (or write any
//! object) would give the model that right too. Instead every sidecar names the revision in
//! force in an `x-infermesh-revision` header on its `/ready` answer (admin port 15020, the probe
//! the kubelet already calls, so it is open to the pod network), and the operator reads it
//! (`AdminPort`), a few pods at a time with a short timeout. `/config` carries the revision too,
//! but it is for the pod's own eyes (localhost only), so it is not used. A sidecar's revision only
//! moves forward (it loads the ConfigMap, which only moves forward), so a pod seen on an accepted
//! revision is not asked again until the accepted revisions change.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use futures::{StreamExt, future::BoxFuture, stream};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use infermesh_crds::{REVISION_HEADER, model_service::LaggingSidecar, ports};

/// Pods asked at once by one reconcile.
const CONCURRENCY: usize = 16;
/// Connect and answer, per pod.
const TIMEOUT: Duration = Duration::from_secs(1);
/// Lagging sidecars listed on the status.
pub const LISTED: usize = 10;
/// What a lagging sidecar's revision reads when it could not be asked.
pub const UNKNOWN: &str = "unknown";

/// A serving pod whose sidecar is asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub pod: String,
    pub uid: String,
    pub ip: String,
}

/// What one pod's sidecar said: the revision it enforces, or `None` when it did not answer one.
pub type Report = (String, Option<String>);

/// Asks sidecars what they enforce. `accepted` are the revisions that would count as on
/// revision: an implementation may answer from what it saw before for those.
pub trait Sidecars: Send + Sync {
    fn revisions<'a>(
        &'a self,
        targets: &'a [Target],
        accepted: &'a [String],
    ) -> BoxFuture<'a, Vec<Report>>;
}

/// Asks each sidecar's admin port over HTTP/1.1 (`GET /ready`).
#[derive(Default)]
pub struct AdminPort {
    /// Pod uid → the revision it last reported.
    seen: Mutex<HashMap<String, String>>,
}

/// Pods remembered at most; past it the memory starts over (pods are asked again).
const SEEN_CAP: usize = 50_000;

impl AdminPort {
    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn ask(ip: &str) -> Option<String> {
        let host = if ip.contains(':') {
            format!("[{ip}]:{}", ports::ADMIN)
        } else {
            format!("{ip}:{}", ports::ADMIN)
        };
        let ask = async {
            let tcp = tokio::net::TcpStream::connect(&host).await.ok()?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .ok()?;
            let conn = tokio::spawn(conn);
            let req = http::Request::get(infermesh_admin::READY_PATH)
                .header(http::header::HOST, &host)
                .body(Empty::<Bytes>::new())
                .ok()?;
            let res = send.send_request(req).await.ok();
            conn.abort();
            let value = res?
                .headers()
                .get(REVISION_HEADER)?
                .to_str()
                .ok()?
                .to_string();
            Some(value)
        };
        tokio::time::timeout(TIMEOUT, ask).await.ok().flatten()
    }
}

impl Sidecars for AdminPort {
    fn revisions<'a>(
        &'a self,
        targets: &'a [Target],
        accepted: &'a [String],
    ) -> BoxFuture<'a, Vec<Report>> {
        Box::pin(async move {
            stream::iter(targets.iter().cloned())
                .map(|t| async move {
                    let known = self.seen().get(&t.uid).cloned();
                    if let Some(rev) = known.filter(|r| accepted.contains(r)) {
                        return (t.pod, Some(rev));
                    }
                    let rev = Self::ask(&t.ip).await;
                    if let Some(rev) = &rev {
                        let mut seen = self.seen();
                        if seen.len() >= SEEN_CAP {
                            seen.clear();
                        }
                        seen.insert(t.uid, rev.clone());
                    }
                    (t.pod, rev)
                })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await
        })
    }
}

/// How many serving sidecars enforce an accepted revision, and the others.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Enforcement {
    pub total: usize,
    pub on_revision: usize,
    /// Every lagging sidecar, by pod name.
    pub lagging: Vec<LaggingSidecar>,
}

impl Enforcement {
    pub fn is_complete(&self) -> bool {
        self.lagging.is_empty()
    }
}

/// Sums up `reports` against the `accepted` revisions.
pub fn summarise(reports: Vec<Report>, accepted: &[String]) -> Enforcement {
    let total = reports.len();
    let mut lagging: Vec<LaggingSidecar> = reports
        .into_iter()
        .filter(|(_, rev)| !rev.as_ref().is_some_and(|r| accepted.contains(r)))
        .map(|(pod, rev)| LaggingSidecar {
            pod,
            revision: rev.unwrap_or_else(|| UNKNOWN.to_string()),
        })
        .collect();
    lagging.sort_by(|a, b| a.pod.cmp(&b.pod));
    Enforcement {
        total,
        on_revision: total - lagging.len(),
        lagging,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted() -> Vec<String> {
        vec!["r2".into(), "r1".into()]
    }

    #[test]
    fn sidecars_on_an_accepted_revision_count_and_the_others_lag_by_name() {
        let e = summarise(
            vec![
                ("c".into(), Some("r0".into())),
                ("a".into(), Some("r2".into())),
                ("b".into(), None),
                ("d".into(), Some("r1".into())),
            ],
            &accepted(),
        );
        assert_eq!((e.total, e.on_revision), (4, 2));
        assert_eq!(
            e.lagging,
            [
                LaggingSidecar {
                    pod: "b".into(),
                    revision: UNKNOWN.into()
                },
                LaggingSidecar {
                    pod: "c".into(),
                    revision: "r0".into()
                },
            ]
        );
        assert!(!e.is_complete());
        assert!(summarise(vec![], &accepted()).is_complete());
    }

    /// A one-shot admin port answering `/ready` with `revision`, on 127.0.0.1.
    async fn sidecar_answering(revision: &'static str) -> (String, tokio::task::JoinHandle<()>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", ports::ADMIN))
            .await
            .ok();
        let Some(listener) = listener else {
            return (String::new(), tokio::spawn(async {}));
        };
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"GET /ready HTTP/1.1\r\n"));
            let answer = format!(
                "HTTP/1.1 200 OK\r\n{REVISION_HEADER}: {revision}\r\ncontent-length: 6\r\n\r\nready\n"
            );
            s.write_all(answer.as_bytes()).await.unwrap();
        });
        ("127.0.0.1".into(), task)
    }

    #[tokio::test]
    async fn the_admin_port_is_asked_once_then_remembered_while_accepted() {
        let (ip, server) = sidecar_answering("r2").await;
        if ip.is_empty() {
            eprintln!("port {} is taken here: skipping", ports::ADMIN);
            return;
        }
        let probe = AdminPort::default();
        let targets = [Target {
            pod: "a".into(),
            uid: "uid-a".into(),
            ip,
        }];
        let first = probe.revisions(&targets, &accepted()).await;
        assert_eq!(first, [("a".to_string(), Some("r2".to_string()))]);
        server.await.unwrap();
        // Nothing listens any more: an accepted revision seen before is not asked again...
        let again = probe.revisions(&targets, &accepted()).await;
        assert_eq!(again, first);
        // ...but once it is no longer accepted, the pod is asked, and an unanswered ask is None.
        let later = probe.revisions(&targets, &["r3".to_string()]).await;
        assert_eq!(later, [("a".to_string(), None)]);
    }
}
