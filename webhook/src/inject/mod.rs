//! The injection decision: pod + namespace + injector config → decision and RFC 6902 JSON patch.
//!
//! Pure: no I/O, no clock. The admission server feeds it the pod from the review and the
//! namespace from its watched cache; everything it decides is also written on the pod as the
//! `infermesh.io/injection-status` annotation, so `kubectl describe pod` explains it.

mod sidecar;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use infermesh_crds::{INJECT_ANNOTATION, SIDECAR_INJECTED, SIDECAR_LABEL, ports};
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

pub use sidecar::{ProxyResources, parse_quantity};

/// Name of the injected init container (native sidecar); also how injection is recognised.
pub const SIDECAR_NAME: &str = infermesh_crds::SIDECAR_CONTAINER;
/// Annotation on the pod explaining what the webhook decided.
pub const STATUS_ANNOTATION: &str = "infermesh.io/injection-status";
/// Annotation giving the model's port when the first container port is not it.
pub const MODEL_PORT_ANNOTATION: &str = "infermesh.io/model-port";
/// Env var telling the model container where the outbound proxy listens.
pub const OUTBOUND_ENV: &str = "INFERMESH_OUTBOUND";
/// Scratch volume for the sidecar (its root filesystem is read-only).
pub const TMP_VOLUME: &str = "infermesh-sidecar-tmp";

/// What the webhook injects, from its flags.
#[derive(Clone, Debug, PartialEq)]
pub struct InjectorConfig {
    /// Sidecar image.
    pub image: String,
    /// `imagePullPolicy` of the sidecar.
    pub image_pull_policy: String,
    /// Default sidecar resources.
    pub resources: ProxyResources,
    /// Namespaces never injected, whatever their annotations say.
    pub system_namespaces: Vec<String>,
}

impl Default for InjectorConfig {
    fn default() -> Self {
        Self {
            image: "infermesh/sidecar:0.1.0".into(),
            image_pull_policy: "IfNotPresent".into(),
            resources: ProxyResources::default(),
            system_namespaces: vec!["kube-system".into(), "infermesh-system".into()],
        }
    }
}

/// What the webhook knows about the pod's namespace.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NamespaceInfo {
    pub name: String,
    /// The namespace's annotations (empty when the namespace is unknown).
    pub annotations: BTreeMap<String, String>,
}

impl NamespaceInfo {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            annotations: BTreeMap::new(),
        }
    }

    pub fn enabled(name: impl Into<String>) -> Self {
        let mut ns = Self::new(name);
        ns.annotations
            .insert(INJECT_ANNOTATION.into(), "enabled".into());
        ns
    }

    fn inject_enabled(&self) -> bool {
        self.annotations.get(INJECT_ANNOTATION).map(String::as_str) == Some("enabled")
    }
}

/// Why a pod was not injected; the label is what metrics count by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    SystemNamespace,
    AlreadyInjected,
    HostNetwork,
    PodOptedOut,
    NamespaceNotEnabled,
    InvalidAnnotation,
    PortConflict,
}

impl SkipReason {
    pub fn label(self) -> &'static str {
        match self {
            Self::SystemNamespace => "skipped_system_namespace",
            Self::AlreadyInjected => "skipped_already_injected",
            Self::HostNetwork => "skipped_host_network",
            Self::PodOptedOut => "skipped_opted_out",
            Self::NamespaceNotEnabled => "skipped_namespace_not_enabled",
            Self::InvalidAnnotation => "skipped_invalid_annotation",
            Self::PortConflict => "skipped_port_conflict",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Injected,
    Skipped(SkipReason),
}

impl Decision {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Skipped(r) => r.label(),
        }
    }
}

/// The decision, the annotation text explaining it, the patch to return, and warnings for the
/// client that created the pod.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub decision: Decision,
    pub status: String,
    pub patch: Patch,
    pub warnings: Vec<String>,
}

/// Decides whether to inject the sidecar into `pod` and builds the patch that does it.
///
/// The patch always carries the status annotation (unless it already says the same), so a
/// second call on the patched pod returns an empty patch: safe under `reinvocationPolicy:
/// IfNeeded`.
pub fn decide(pod: &Pod, ns: &NamespaceInfo, cfg: &InjectorConfig) -> Outcome {
    let empty = BTreeMap::new();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let mut warnings = Vec::new();
    let skip = |reason: SkipReason, why: String, warnings: Vec<String>| {
        let status = format!("skipped: {why}");
        Outcome {
            decision: Decision::Skipped(reason),
            patch: status_patch(pod, &status),
            status,
            warnings,
        }
    };

    if cfg.system_namespaces.contains(&ns.name) {
        return skip(
            SkipReason::SystemNamespace,
            format!("namespace {} is a system namespace", ns.name),
            warnings,
        );
    }
    if has_sidecar(pod) {
        // Keep an existing explanation (normally "injected" from our own earlier pass).
        let status = annotations
            .get(STATUS_ANNOTATION)
            .cloned()
            .unwrap_or_else(|| "skipped: sidecar already present".into());
        let mut patch = status_patch(pod, &status);
        if status == "injected" {
            // Reinvoked after another webhook added containers: give them the outbound env too.
            let containers = pod
                .spec
                .as_ref()
                .map(|s| s.containers.as_slice())
                .unwrap_or_default();
            patch.0.extend(outbound_env_ops(containers));
        }
        return Outcome {
            decision: Decision::Skipped(SkipReason::AlreadyInjected),
            patch,
            status,
            warnings,
        };
    }
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network) == Some(true) {
        return skip(
            SkipReason::HostNetwork,
            "hostNetwork pod (the sidecar's ports would clash with the node's)".into(),
            warnings,
        );
    }
    match annotations.get(INJECT_ANNOTATION).map(String::as_str) {
        Some("disabled") => {
            return skip(
                SkipReason::PodOptedOut,
                format!("pod annotation {INJECT_ANNOTATION}=disabled"),
                warnings,
            );
        }
        Some("enabled") => {}
        other => {
            if let Some(v) = other {
                warnings.push(format!(
                    "infermesh: pod annotation {INJECT_ANNOTATION}={v:?} is not 'enabled' or \
                     'disabled'; following the namespace"
                ));
            }
            if !ns.inject_enabled() {
                return skip(
                    SkipReason::NamespaceNotEnabled,
                    format!(
                        "namespace {} does not have annotation {INJECT_ANNOTATION}=enabled",
                        ns.name
                    ),
                    warnings,
                );
            }
        }
    }

    let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    let sidecar_ports = [ports::INBOUND, ports::OUTBOUND, ports::ADMIN];
    for c in containers.iter().chain(
        spec.and_then(|s| s.init_containers.as_deref())
            .unwrap_or_default(),
    ) {
        for p in c.ports.as_deref().unwrap_or_default() {
            if sidecar_ports
                .iter()
                .any(|s| i32::from(*s) == p.container_port)
            {
                return skip(
                    SkipReason::PortConflict,
                    format!(
                        "container {} uses port {}, reserved for the sidecar",
                        c.name, p.container_port
                    ),
                    warnings,
                );
            }
        }
    }

    let overrides = match sidecar::Overrides::from_annotations(annotations, cfg) {
        Ok(o) => o,
        Err(why) => {
            warnings.push(format!("infermesh: sidecar not injected: {why}"));
            return skip(SkipReason::InvalidAnnotation, why, warnings);
        }
    };
    let model_port = match annotations.get(MODEL_PORT_ANNOTATION) {
        Some(v) => match v.parse::<u16>() {
            Ok(p) if p > 0 && !sidecar_ports.contains(&p) => Some(p),
            _ => {
                let why = format!(
                    "annotation {MODEL_PORT_ANNOTATION}={v:?} is not a port in 1-65535 outside \
                     the sidecar's ports"
                );
                warnings.push(format!("infermesh: sidecar not injected: {why}"));
                return skip(SkipReason::InvalidAnnotation, why, warnings);
            }
        },
        None => containers
            .first()
            .and_then(|c| c.ports.as_deref()?.first())
            .and_then(|p| u16::try_from(p.container_port).ok()),
    };
    if model_port.is_none() {
        warnings.push(format!(
            "infermesh: no model port found; set annotation {MODEL_PORT_ANNOTATION} or a \
             containerPort on the first container"
        ));
    }

    let status = "injected".to_string();
    let mut ops = vec![];
    let init = spec.and_then(|s| s.init_containers.as_ref());
    let sidecar = sidecar::container(&overrides, model_port);
    ops.push(match init {
        // First, so every other init container and the model start once the proxy is ready.
        Some(_) => add(&["spec", "initContainers", "0"], sidecar),
        None => add(&["spec", "initContainers"], json!([sidecar])),
    });
    ops.push(match spec.and_then(|s| s.volumes.as_ref()) {
        Some(_) => add(&["spec", "volumes", "-"], sidecar::tmp_volume()),
        None => add(&["spec", "volumes"], json!([sidecar::tmp_volume()])),
    });
    ops.extend(outbound_env_ops(containers));
    ops.push(injected_label(pod));
    ops.extend(status_patch(pod, &status).0);
    Outcome {
        decision: Decision::Injected,
        status,
        patch: Patch(ops),
        warnings,
    }
}

/// Adds `INFERMESH_OUTBOUND` to every app container that does not set it already.
fn outbound_env_ops(containers: &[k8s_openapi::api::core::v1::Container]) -> Vec<PatchOperation> {
    let outbound = json!({
        "name": OUTBOUND_ENV,
        "value": format!("http://127.0.0.1:{}", ports::OUTBOUND),
    });
    let mut ops = vec![];
    for (i, c) in containers.iter().enumerate() {
        let idx = i.to_string();
        match c.env.as_ref() {
            Some(env) if env.iter().any(|e| e.name == OUTBOUND_ENV) => {}
            Some(_) => ops.push(add(
                &["spec", "containers", &idx, "env", "-"],
                outbound.clone(),
            )),
            None => ops.push(add(&["spec", "containers", &idx, "env"], json!([outbound]))),
        }
    }
    ops
}

/// True when any container of the pod is the infermesh sidecar.
pub fn has_sidecar(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.init_containers
            .iter()
            .flatten()
            .chain(s.containers.iter())
            .any(|c| c.name == SIDECAR_NAME)
    })
}

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(tokens.iter().copied()),
        value,
    })
}

/// Sets the status annotation, or nothing when it already holds `status`.
/// Labels the pod `infermesh.io/sidecar=injected`: the Service fronting a ModelService selects it,
/// so kube-proxy never sends to a pod with no sidecar on the Service's target port (15006).
fn injected_label(pod: &Pod) -> PatchOperation {
    match pod.metadata.labels.as_ref() {
        // `add` on an existing member replaces it (RFC 6902 §4.1).
        Some(_) => add(
            &["metadata", "labels", SIDECAR_LABEL],
            json!(SIDECAR_INJECTED),
        ),
        None => add(
            &["metadata", "labels"],
            json!({ SIDECAR_LABEL: SIDECAR_INJECTED }),
        ),
    }
}

fn status_patch(pod: &Pod, status: &str) -> Patch {
    match pod.metadata.annotations.as_ref() {
        Some(a) if a.get(STATUS_ANNOTATION).map(String::as_str) == Some(status) => Patch(vec![]),
        // `add` on an existing member replaces it (RFC 6902 §4.1).
        Some(_) => Patch(vec![add(
            &["metadata", "annotations", STATUS_ANNOTATION],
            json!(status),
        )]),
        None => Patch(vec![add(
            &["metadata", "annotations"],
            json!({ STATUS_ANNOTATION: status }),
        )]),
    }
}
