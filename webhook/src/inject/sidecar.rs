//! The injected sidecar container: its spec, and the per-pod overrides read from annotations.

use std::collections::BTreeMap;

use infermesh_crds::ports;
use serde_json::{Map, Value, json};

use super::{InjectorConfig, SIDECAR_NAME, TMP_VOLUME};

/// Annotations that override the webhook's defaults for one pod.
pub const IMAGE_ANNOTATION: &str = "infermesh.io/proxy-image";
pub const CPU_ANNOTATION: &str = "infermesh.io/proxy-cpu";
pub const MEMORY_ANNOTATION: &str = "infermesh.io/proxy-memory";
pub const CPU_LIMIT_ANNOTATION: &str = "infermesh.io/proxy-cpu-limit";
pub const MEMORY_LIMIT_ANNOTATION: &str = "infermesh.io/proxy-memory-limit";

/// The uid/gid the sidecar runs as (distroless "nonroot").
const PROXY_UID: i64 = 65532;

/// Sidecar resource requests and limits, as Kubernetes quantities.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyResources {
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
}

impl Default for ProxyResources {
    fn default() -> Self {
        Self {
            cpu_request: "50m".into(),
            memory_request: "32Mi".into(),
            cpu_limit: None,
            memory_limit: Some("256Mi".into()),
        }
    }
}

/// The image and resources for one pod: the config's, overridden by the pod's annotations.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Overrides {
    image: String,
    pull_policy: String,
    resources: ProxyResources,
}

impl Overrides {
    pub(super) fn from_annotations(
        a: &BTreeMap<String, String>,
        cfg: &InjectorConfig,
    ) -> Result<Self, String> {
        let quantity = |key: &str, default: Option<&String>| -> Result<Option<String>, String> {
            match a.get(key) {
                None => Ok(default.cloned()),
                Some(v) if parse_quantity(v).is_some() => Ok(Some(v.trim().to_string())),
                Some(v) => Err(format!(
                    "annotation {key}={v:?} is not a Kubernetes quantity"
                )),
            }
        };
        let r = &cfg.resources;
        let mut resources = ProxyResources {
            cpu_request: quantity(CPU_ANNOTATION, Some(&r.cpu_request))?.unwrap_or_default(),
            memory_request: quantity(MEMORY_ANNOTATION, Some(&r.memory_request))?
                .unwrap_or_default(),
            cpu_limit: quantity(CPU_LIMIT_ANNOTATION, r.cpu_limit.as_ref())?,
            memory_limit: quantity(MEMORY_LIMIT_ANNOTATION, r.memory_limit.as_ref())?,
        };
        // A request raised above the default limit lifts the limit with it, rather than
        // producing a pod the API server rejects.
        raise_limit(&resources.cpu_request.clone(), &mut resources.cpu_limit);
        raise_limit(
            &resources.memory_request.clone(),
            &mut resources.memory_limit,
        );
        let image = match a.get(IMAGE_ANNOTATION) {
            Some(v) if !v.trim().is_empty() && !v.contains(char::is_whitespace) => v.clone(),
            Some(v) => {
                return Err(format!(
                    "annotation {IMAGE_ANNOTATION}={v:?} is not an image"
                ));
            }
            None => cfg.image.clone(),
        };
        Ok(Self {
            image,
            pull_policy: cfg.image_pull_policy.clone(),
            resources,
        })
    }
}

fn raise_limit(request: &str, limit: &mut Option<String>) {
    if let (Some(req), Some(lim)) = (
        parse_quantity(request),
        limit.as_deref().and_then(parse_quantity),
    ) && req > lim
    {
        *limit = Some(request.to_string());
    }
}

/// Parses a Kubernetes resource quantity ("100m", "64Mi", "1.5", "2e3") to its value.
/// `None` when it is not one.
pub fn parse_quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() || num.starts_with('-') || num.matches('.').count() > 1 || num == "." {
        return None;
    }
    let value: f64 = num.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.len() > 1 && (e.starts_with('e') || e.starts_with('E')) => {
            10f64.powi(e[1..].parse::<i32>().ok()?)
        }
        _ => return None,
    };
    Some(value * factor)
}

/// The native sidecar: an init container that keeps running (`restartPolicy: Always`) and whose
/// startup probe holds back the containers after it until the proxy is ready.
pub(super) fn container(o: &Overrides, model_port: Option<u16>) -> Value {
    let field = |name: &str, path: &str| json!({ "name": name, "valueFrom": { "fieldRef": { "apiVersion": "v1", "fieldPath": path } } });
    let mut env = vec![
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("POD_IP", "status.podIP"),
        field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ];
    if let Some(p) = model_port {
        env.push(json!({ "name": "INFERMESH_MODEL_PORT", "value": p.to_string() }));
    }
    let mut requests = Map::new();
    requests.insert("cpu".into(), json!(o.resources.cpu_request));
    requests.insert("memory".into(), json!(o.resources.memory_request));
    let mut limits = Map::new();
    if let Some(c) = &o.resources.cpu_limit {
        limits.insert("cpu".into(), json!(c));
    }
    if let Some(m) = &o.resources.memory_limit {
        limits.insert("memory".into(), json!(m));
    }
    let mut resources = Map::new();
    resources.insert("requests".into(), Value::Object(requests));
    if !limits.is_empty() {
        resources.insert("limits".into(), Value::Object(limits));
    }
    let admin = ports::ADMIN;
    json!({
        "name": SIDECAR_NAME,
        "image": o.image,
        "imagePullPolicy": o.pull_policy,
        "restartPolicy": "Always",
        "ports": [
            { "name": "im-inbound", "containerPort": ports::INBOUND, "protocol": "TCP" },
            { "name": "im-outbound", "containerPort": ports::OUTBOUND, "protocol": "TCP" },
            { "name": "im-admin", "containerPort": admin, "protocol": "TCP" },
        ],
        "env": env,
        "resources": resources,
        "startupProbe": {
            "httpGet": { "path": "/ready", "port": admin },
            "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 120,
        },
        "readinessProbe": {
            "httpGet": { "path": "/ready", "port": admin },
            "periodSeconds": 5, "timeoutSeconds": 1, "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": { "path": "/live", "port": admin },
            "periodSeconds": 10, "timeoutSeconds": 1, "failureThreshold": 3,
        },
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": { "drop": ["ALL"] },
            "seccompProfile": { "type": "RuntimeDefault" },
        },
        "volumeMounts": [{ "name": TMP_VOLUME, "mountPath": "/tmp" }],
    })
}

pub(super) fn tmp_volume() -> Value {
    json!({ "name": TMP_VOLUME, "emptyDir": { "medium": "Memory", "sizeLimit": "16Mi" } })
}

#[cfg(test)]
mod quantity_tests {
    use super::parse_quantity;

    #[test]
    fn parses_kubernetes_quantities() {
        let cases = [
            ("100m", Some(0.1)),
            ("1", Some(1.0)),
            ("1.5", Some(1.5)),
            ("64Mi", Some(64.0 * 1024.0 * 1024.0)),
            ("1G", Some(1e9)),
            ("2e3", Some(2000.0)),
            (" 1Gi ", Some(1024f64.powi(3))),
            ("", None),
            ("abc", None),
            ("-1", None),
            ("1.2.3", None),
            ("10mb", None),
            ("Mi", None),
            ("1e", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_quantity(input), want, "{input:?}");
        }
    }
}
