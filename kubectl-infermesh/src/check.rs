//! `kubectl infermesh check`: is the install healthy? Each check reads the cluster as it is and
//! prints `√` or `×` with, on failure, what is wrong and the one thing to do about it. The exit
//! status is 1 when any check failed.

use std::collections::BTreeSet;
use std::time::Duration;

use infermesh_crds::{INJECT_ANNOTATION, MODELSERVICE_LABEL, ModelService, SIDECAR_CONTAINER};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};

/// Where deploy/ puts the operator and the webhook.
pub const SYSTEM_NAMESPACE: &str = "infermesh-system";
const OPERATOR: &str = "infermesh-operator";
const WEBHOOK: &str = "infermesh-webhook";
/// The ModelService CRD (`<plural>.<group>`).
const CRD_NAME: &str = "modelservices.infermesh.io";
/// Pods named per failure, at most.
const LISTED: usize = 10;

/// One check's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub ok: bool,
    /// What was found, in one line.
    pub what: String,
    /// On failure: the one thing to do.
    pub fix: Option<String>,
}

fn pass(what: impl Into<String>) -> Outcome {
    Outcome {
        ok: true,
        what: what.into(),
        fix: None,
    }
}

fn fail(what: impl Into<String>, fix: impl Into<String>) -> Outcome {
    Outcome {
        ok: false,
        what: what.into(),
        fix: Some(fix.into()),
    }
}

/// Runs every check in order; later ones still run when earlier ones fail, so one reading shows
/// everything that is wrong.
pub async fn run(client: &Client) -> Vec<Outcome> {
    let mut out = Vec::new();
    out.push(crd(client).await);
    let services = match Api::<ModelService>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => {
            out.push(pass(format!(
                "ModelServices are served ({} in the cluster)",
                list.items.len()
            )));
            Some(list.items)
        }
        Err(e) => {
            out.push(fail(
                format!("listing ModelServices failed: {e}"),
                "install the CRD: kubectl apply -k deploy/",
            ));
            None
        }
    };
    out.push(deployment(client, OPERATOR).await);
    out.push(leader(client).await);
    if let Some(services) = &services {
        out.push(reconciled(services));
    }
    out.push(deployment(client, WEBHOOK).await);
    out.push(webhook_endpoints(client).await);
    out.push(ca_bundle(client).await);
    let injected = injected_namespaces(client).await;
    match &injected {
        Ok(names) if names.is_empty() => out.push(fail(
            "no namespace has injection enabled",
            format!("kubectl annotate namespace NAME {INJECT_ANNOTATION}=enabled"),
        )),
        Ok(names) => {
            out.push(pass(format!(
                "sidecar injection is enabled in {}: {}",
                plural(names.len(), "namespace"),
                names.iter().cloned().collect::<Vec<_>>().join(", ")
            )));
            out.push(admission(client, names.iter().next().map(String::as_str)).await);
        }
        Err(e) => out.push(fail(
            format!("listing namespaces failed: {e}"),
            "check kubectl's access: kubectl auth can-i list namespaces",
        )),
    }
    let injected = injected.unwrap_or_default();
    out.extend(pods_without_sidecar(client, &injected).await);
    if let Some(services) = &services {
        out.extend(stale_sidecars(services));
    }
    out
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

async fn crd(client: &Client) -> Outcome {
    let fix = "install it: kubectl apply -k deploy/";
    match Api::<CustomResourceDefinition>::all(client.clone())
        .get_opt(CRD_NAME)
        .await
    {
        Ok(Some(crd)) => {
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                pass(format!("CRD {CRD_NAME} is installed and established"))
            } else {
                fail(
                    format!("CRD {CRD_NAME} exists but is not established"),
                    format!("kubectl describe crd {CRD_NAME}"),
                )
            }
        }
        Ok(None) => fail(format!("CRD {CRD_NAME} is not installed"), fix),
        Err(e) => fail(format!("reading CRD {CRD_NAME} failed: {e}"), fix),
    }
}

async fn deployment(client: &Client, name: &str) -> Outcome {
    let api: Api<Deployment> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let describe = format!("kubectl -n {SYSTEM_NAMESPACE} describe deployment {name}");
    match api.get_opt(name).await {
        Ok(Some(d)) => {
            let want = d.spec.and_then(|s| s.replicas).unwrap_or(1);
            let available = d.status.and_then(|s| s.available_replicas).unwrap_or(0);
            if available > 0 {
                pass(format!("{name} is available ({available}/{want} replicas)"))
            } else {
                fail(
                    format!("{name} has no available replica (0/{want})"),
                    describe,
                )
            }
        }
        Ok(None) => fail(
            format!("deployment {SYSTEM_NAMESPACE}/{name} does not exist"),
            "install infermesh: kubectl apply -k deploy/",
        ),
        Err(e) => fail(format!("reading deployment {name} failed: {e}"), describe),
    }
}

async fn leader(client: &Client) -> Outcome {
    let api: Api<Lease> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let logs = format!("kubectl -n {SYSTEM_NAMESPACE} logs deployment/{OPERATOR}");
    let lease = match api.get_opt(OPERATOR).await {
        Ok(Some(l)) => l,
        Ok(None) => {
            return fail("no operator has taken the leader Lease", logs);
        }
        Err(e) => return fail(format!("reading the leader Lease failed: {e}"), logs),
    };
    let spec = lease.spec.unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let renewed = spec.renew_time.or(spec.acquire_time).map(|t| t.0);
    let age = renewed.map(|t| Timestamp::now().as_second() - t.as_second());
    match age {
        Some(age) if !holder.is_empty() && age <= duration => pass(format!(
            "operator {holder} leads (Lease renewed {age}s ago)"
        )),
        Some(age) => fail(
            format!(
                "the leader Lease was last renewed {age}s ago (lease {duration}s): no operator leads"
            ),
            logs,
        ),
        None => fail("the leader Lease has never been renewed", logs),
    }
}

/// Every ModelService's status describes its current spec (the operator keeps up).
fn reconciled(services: &[ModelService]) -> Outcome {
    let behind: Vec<String> = services
        .iter()
        .filter(|m| {
            let seen = m.status.as_ref().and_then(|s| s.observed_generation);
            seen != m.metadata.generation
        })
        .map(|m| format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any()))
        .collect();
    if behind.is_empty() {
        pass(format!(
            "the operator has reconciled every ModelService ({})",
            services.len()
        ))
    } else {
        fail(
            format!(
                "not reconciled yet: {}",
                behind
                    .iter()
                    .take(LISTED)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            format!(
                "kubectl describe modelservice -n {} (Events), then kubectl -n {SYSTEM_NAMESPACE} logs deployment/{OPERATOR}",
                behind[0].split('/').next().unwrap_or_default()
            ),
        )
    }
}

async fn webhook_endpoints(client: &Client) -> Outcome {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let params = ListParams::default().labels(&format!("kubernetes.io/service-name={WEBHOOK}"));
    let fix = format!("kubectl -n {SYSTEM_NAMESPACE} get pods -l app.kubernetes.io/name={WEBHOOK}");
    match api.list(&params).await {
        Ok(list) => {
            let ready = list
                .items
                .iter()
                .flat_map(|s| &s.endpoints)
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
                .count();
            if ready > 0 {
                pass(format!(
                    "Service {WEBHOOK} has {} ready",
                    plural(ready, "endpoint")
                ))
            } else {
                fail(format!("Service {WEBHOOK} has no ready endpoint"), fix)
            }
        }
        Err(e) => fail(format!("listing the webhook's endpoints failed: {e}"), fix),
    }
}

async fn ca_bundle(client: &Client) -> Outcome {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let logs = format!(
        "kubectl -n {SYSTEM_NAMESPACE} logs deployment/{WEBHOOK} (it writes its CA there at start)"
    );
    let config = match api.get_opt(WEBHOOK).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return fail(
                format!("MutatingWebhookConfiguration {WEBHOOK} does not exist"),
                "install infermesh: kubectl apply -k deploy/",
            );
        }
        Err(e) => {
            return fail(
                format!("reading {WEBHOOK}'s configuration failed: {e}"),
                logs,
            );
        }
    };
    let hooks = config.webhooks.unwrap_or_default();
    if hooks.is_empty() {
        return fail(
            format!("{WEBHOOK}'s configuration has no webhook"),
            "kubectl apply -k deploy/",
        );
    }
    let mut earliest: Option<i64> = None;
    for h in &hooks {
        let Some(bundle) = h.client_config.ca_bundle.as_ref() else {
            return fail(format!("webhook {} has no caBundle", h.name), logs);
        };
        match certificate_expiry(&bundle.0) {
            Ok(expiry) => earliest = Some(earliest.map_or(expiry, |e| e.min(expiry))),
            Err(why) => return fail(format!("webhook {}'s caBundle {why}", h.name), logs),
        }
    }
    let days = earliest.map_or(0, |t| (t - Timestamp::now().as_second()) / 86_400);
    pass(format!(
        "the webhook's caBundle holds a valid CA ({}, expires in {days} days)",
        plural(hooks.len(), "webhook")
    ))
}

/// When the first certificate of a PEM bundle expires (Unix seconds), or why it cannot serve.
pub fn certificate_expiry(pem: &[u8]) -> Result<i64, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| format!("is not a PEM certificate ({e})"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("does not parse as X.509 ({e})"))?;
    let validity = cert.validity();
    if !validity.is_valid() {
        return Err(format!(
            "is outside its validity ({} .. {})",
            validity.not_before, validity.not_after
        ));
    }
    Ok(validity.not_after.timestamp())
}

async fn injected_namespaces(client: &Client) -> kube::Result<BTreeSet<String>> {
    let list = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|n| n.annotations().get(INJECT_ANNOTATION).map(String::as_str) == Some("enabled"))
        .map(|n| n.name_any())
        .collect())
}

/// The API server calls the webhook on a pod created in `namespace`: a dry-run creation comes
/// back with the sidecar (nothing is stored).
async fn admission(client: &Client, namespace: Option<&str>) -> Outcome {
    let Some(ns) = namespace else {
        return pass("no injected namespace to try admission in");
    };
    let pod = Pod {
        metadata: ObjectMeta {
            generate_name: Some("infermesh-check-".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "probe".into(),
                image: Some("infermesh/check:dry-run".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let params = PostParams {
        dry_run: true,
        field_manager: Some("kubectl-infermesh".into()),
    };
    let fix = format!(
        "kubectl -n {SYSTEM_NAMESPACE} logs deployment/{WEBHOOK}; kubectl get mutatingwebhookconfiguration {WEBHOOK} -o yaml"
    );
    match Api::<Pod>::namespaced(client.clone(), ns)
        .create(&params, &pod)
        .await
    {
        Ok(p) if has_sidecar(&p) => pass(format!(
            "the API server reaches the webhook: a pod created in {ns} (dry run) gets the sidecar"
        )),
        Ok(_) => fail(
            format!("a pod created in {ns} (dry run) came back without the sidecar"),
            fix,
        ),
        Err(e) => fail(
            format!("a pod created in {ns} (dry run) was refused: {e}"),
            fix,
        ),
    }
}

fn has_sidecar(p: &Pod) -> bool {
    let Some(spec) = &p.spec else { return false };
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .any(|c| c.name == SIDECAR_CONTAINER)
}

/// Pods that carry the ModelService label (so the mesh would route to them) but run no sidecar.
async fn pods_without_sidecar(client: &Client, injected: &BTreeSet<String>) -> Vec<Outcome> {
    let params = ListParams::default().labels(MODELSERVICE_LABEL);
    let pods = match Api::<Pod>::all(client.clone()).list(&params).await {
        Ok(list) => list.items,
        Err(e) => {
            return vec![fail(
                format!("listing pods failed: {e}"),
                "check kubectl's access: kubectl auth can-i list pods -A",
            )];
        }
    };
    let live: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .collect();
    let bare: Vec<&&Pod> = live.iter().filter(|p| !has_sidecar(p)).collect();
    if bare.is_empty() {
        return vec![pass(format!(
            "every pod labelled {MODELSERVICE_LABEL} runs the sidecar ({})",
            live.len()
        ))];
    }
    bare.iter()
        .take(LISTED)
        .map(|p| {
            let ns = p.namespace().unwrap_or_default();
            let name = p.name_any();
            let owner = p.labels().get(MODELSERVICE_LABEL).cloned().unwrap_or_default();
            let fix = if !injected.contains(&ns) {
                format!(
                    "kubectl annotate namespace {ns} {INJECT_ANNOTATION}=enabled, then recreate the pod"
                )
            } else if p.annotations().get(INJECT_ANNOTATION).map(String::as_str) == Some("disabled") {
                format!(
                    "remove the pod's {INJECT_ANNOTATION}=disabled annotation (in its template), or its {MODELSERVICE_LABEL} label"
                )
            } else {
                format!(
                    "it was created while the webhook was down: kubectl -n {ns} delete pod {name} (its controller recreates it, injected)"
                )
            };
            fail(
                format!("pod {ns}/{name} carries {MODELSERVICE_LABEL}={owner} but runs no sidecar"),
                fix,
            )
        })
        .collect()
}

/// Sidecars that do not enforce the config revision carrying their ModelService (as the
/// operator last read them).
fn stale_sidecars(services: &[ModelService]) -> Vec<Outcome> {
    let mut out = Vec::new();
    let mut sidecars = 0;
    for m in services {
        let Some(s) = &m.status else { continue };
        sidecars += s.sidecars_total.unwrap_or(0);
        let ns = m.namespace().unwrap_or_default();
        for lag in s.lagging_sidecars.iter().take(LISTED) {
            out.push(fail(
                format!(
                    "sidecar of {ns}/{} enforces revision {}, not {} ({})",
                    lag.pod,
                    lag.revision,
                    s.revision.as_deref().unwrap_or("?"),
                    m.name_any()
                ),
                format!(
                    "kubectl -n {ns} logs {} -c {SIDECAR_CONTAINER} (a sidecar that cannot read its config says why)",
                    lag.pod
                ),
            ));
        }
    }
    if out.is_empty() {
        out.push(pass(format!(
            "every serving sidecar enforces its ModelService's config revision ({sidecars})"
        )));
    }
    out
}

/// The outcomes as lines: `√ what`, or `× what` and an indented fix.
pub fn render(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    for o in outcomes {
        out.push_str(if o.ok { "√ " } else { "× " });
        out.push_str(&o.what);
        out.push('\n');
        if let Some(fix) = &o.fix {
            out.push_str("    fix: ");
            out.push_str(fix);
            out.push('\n');
        }
    }
    let failed = outcomes.iter().filter(|o| !o.ok).count();
    if failed == 0 {
        out.push_str(&format!(
            "\nStatus check results are √ ({} checks)\n",
            outcomes.len()
        ));
    } else {
        out.push_str(&format!(
            "\nStatus check results are × ({} of {} failed)\n",
            failed,
            outcomes.len()
        ));
    }
    out
}

/// How long a `check` may take in all before it gives up on the API server.
pub const TIMEOUT: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;
    use infermesh_crds::model_service::{LaggingSidecar, ModelServiceStatus};

    fn msvc(generation: i64, observed: Option<i64>, lagging: &[&str]) -> ModelService {
        let mut m: ModelService = serde_json::from_value(serde_json::json!({
            "apiVersion": "infermesh.io/v1alpha1",
            "kind": "ModelService",
            "metadata": {"name": "llm", "namespace": "demo", "generation": generation},
            "spec": {"port": 8080, "variants": [{"name": "v1", "weight": 100,
                "selector": {"matchLabels": {"app": "llm"}}}]},
        }))
        .unwrap();
        m.status = Some(ModelServiceStatus {
            observed_generation: observed,
            revision: Some("r2".into()),
            sidecars_total: Some(3),
            lagging_sidecars: lagging
                .iter()
                .map(|p| LaggingSidecar {
                    pod: (*p).into(),
                    revision: "r1".into(),
                })
                .collect(),
            ..Default::default()
        });
        m
    }

    #[test]
    fn a_model_service_whose_status_is_behind_its_spec_fails_by_name() {
        assert!(reconciled(&[msvc(2, Some(2), &[])]).ok);
        let behind = reconciled(&[msvc(3, Some(2), &[])]);
        assert!(!behind.ok && behind.what.contains("demo/llm"), "{behind:?}");
        assert!(!reconciled(&[msvc(1, None, &[])]).ok, "never reconciled");
    }

    #[test]
    fn each_lagging_sidecar_is_named_with_the_revision_it_enforces() {
        let ok = stale_sidecars(&[msvc(1, Some(1), &[])]);
        assert_eq!(ok.len(), 1);
        assert!(ok[0].ok && ok[0].what.contains("(3)"));
        let lag = stale_sidecars(&[msvc(1, Some(1), &["llm-a", "llm-b"])]);
        assert_eq!(lag.len(), 2);
        assert!(
            lag[0]
                .what
                .contains("demo/llm-a enforces revision r1, not r2")
        );
        assert!(
            lag[1]
                .fix
                .as_deref()
                .unwrap()
                .contains("logs llm-b -c infermesh-sidecar")
        );
    }

    #[test]
    fn the_summary_counts_failures_and_each_failure_has_its_fix() {
        let text = render(&[pass("a"), fail("b is broken", "do c")]);
        assert!(
            text.contains("√ a\n× b is broken\n    fix: do c\n"),
            "{text}"
        );
        assert!(text.contains("× (1 of 2 failed)"));
        assert!(render(&[pass("a")]).contains("results are √ (1 checks)"));
    }

    #[test]
    fn a_ca_bundle_that_is_not_a_certificate_says_so() {
        assert!(certificate_expiry(b"not pem").unwrap_err().contains("PEM"));
        // A self-signed certificate valid for 100 years from 2026, made once with openssl.
        let pem = include_str!("testdata/ca.pem");
        let expiry = certificate_expiry(pem.as_bytes()).unwrap();
        assert!(expiry > Timestamp::now().as_second() + 50 * 365 * 86_400);
    }
}
