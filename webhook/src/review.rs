//! AdmissionReview v1 in, AdmissionReview v1 out, around the injection decision.
//!
//! A body that is not an AdmissionReview is the caller's error (HTTP 400 with the reason). A
//! review whose object is not a usable Pod is answered "allowed, no patch" with a warning: the
//! webhook never blocks a pod it does not understand, and never panics on one.

use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

use crate::inject::{self, InjectorConfig, NamespaceInfo};

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("body is not an admission.k8s.io/v1 AdmissionReview: {0}")]
    Malformed(String),
    #[error("AdmissionReview has no request")]
    NoRequest,
}

/// Parses the HTTP body into the review's request.
pub fn parse(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, ReviewError> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(|e| ReviewError::Malformed(e.to_string()))?;
    review.try_into().map_err(|_| ReviewError::NoRequest)
}

/// The namespace the review is about (pods on CREATE may not carry it in their metadata).
pub fn namespace_of(req: &AdmissionRequest<DynamicObject>) -> Option<&str> {
    req.namespace
        .as_deref()
        .or_else(|| req.object.as_ref()?.metadata.namespace.as_deref())
}

/// The response for `req`, and the label metrics count it under.
pub fn respond(
    req: &AdmissionRequest<DynamicObject>,
    ns: &NamespaceInfo,
    cfg: &InjectorConfig,
) -> (AdmissionReview<DynamicObject>, &'static str) {
    let allowed = AdmissionResponse::from(req);
    let warn = |msg: String| {
        let mut r = allowed.clone();
        r.warnings = Some(vec![msg]);
        r.into_review()
    };
    if req.kind.kind != "Pod" || !req.kind.group.is_empty() || req.operation != Operation::Create {
        return (allowed.clone().into_review(), "ignored");
    }
    let Some(obj) = req.object.as_ref() else {
        return (
            warn("infermesh: pod review without an object; not injected".into()),
            "unexpected_shape",
        );
    };
    let pod: Pod = match serde_json::to_value(obj).and_then(serde_json::from_value) {
        Ok(p) => p,
        Err(e) => {
            return (
                warn(format!(
                    "infermesh: pod could not be read ({e}); not injected"
                )),
                "unexpected_shape",
            );
        }
    };
    if pod.spec.as_ref().is_none_or(|s| s.containers.is_empty()) {
        return (
            warn("infermesh: pod has no containers; not injected".into()),
            "unexpected_shape",
        );
    }
    let outcome = inject::decide(&pod, ns, cfg);
    let label = outcome.decision.label();
    let mut resp = allowed.clone();
    if !outcome.warnings.is_empty() {
        resp.warnings = Some(outcome.warnings);
    }
    if !outcome.patch.0.is_empty() {
        resp = match resp.clone().with_patch(outcome.patch) {
            Ok(r) => r,
            Err(e) => {
                return (
                    warn(format!(
                        "infermesh: patch could not be encoded ({e}); not injected"
                    )),
                    "unexpected_shape",
                );
            }
        };
    }
    (resp.into_review(), label)
}

/// The review as JSON, with the patch as a base64 string: the form the API documents for Go's
/// `[]byte` (kube-core writes an array of numbers, which Go also accepts but is 3-4x larger).
pub fn to_json(review: &AdmissionReview<DynamicObject>) -> serde_json::Result<Vec<u8>> {
    let mut v = serde_json::to_value(review)?;
    if let Some(patch) = v.pointer_mut("/response/patch") {
        let bytes: Vec<u8> = serde_json::from_value(patch.take())?;
        *patch = serde_json::to_value(k8s_openapi::ByteString(bytes))?;
    }
    serde_json::to_vec(&v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn review(object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": { "group": "", "version": "v1", "kind": "Pod" },
                "resource": { "group": "", "version": "v1", "resource": "pods" },
                "namespace": "ml",
                "operation": "CREATE",
                "userInfo": { "username": "admin" },
                "object": object,
                "oldObject": null,
            }
        }))
        .expect("json")
    }

    fn pod() -> Value {
        json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "generateName": "m-" },
                "spec": { "containers": [{ "name": "m", "image": "m", "ports": [{ "containerPort": 8080 }] }] } })
    }

    fn answer(body: &[u8], ns: &NamespaceInfo) -> (Value, &'static str) {
        let req = parse(body).expect("parses");
        let (review, label) = respond(&req, ns, &InjectorConfig::default());
        let json = to_json(&review).expect("serialises");
        (serde_json::from_slice(&json).expect("json"), label)
    }

    #[test]
    fn injects_with_a_base64_json_patch() {
        let body = review(pod());
        let req = parse(&body).expect("parses");
        assert_eq!(namespace_of(&req), Some("ml"));
        let (v, label) = answer(&body, &NamespaceInfo::enabled("ml"));
        assert_eq!(label, "injected");
        let resp = &v["response"];
        assert_eq!(resp["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(resp["allowed"], true);
        assert_eq!(resp["patchType"], "JSONPatch");
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v["kind"], "AdmissionReview");
        // The patch travels base64-encoded ([]byte in Go) and applies to the pod.
        let bytes: k8s_openapi::ByteString =
            serde_json::from_value(resp["patch"].clone()).expect("base64");
        let patch: json_patch::Patch = serde_json::from_slice(&bytes.0).expect("patch");
        let mut doc = pod();
        json_patch::patch(&mut doc, &patch).expect("applies");
        assert_eq!(
            doc["spec"]["initContainers"][0]["name"],
            "infermesh-sidecar"
        );
    }

    #[test]
    fn skipped_pods_get_only_the_status_annotation() {
        let (v, label) = answer(&review(pod()), &NamespaceInfo::new("ml"));
        assert_eq!(label, "skipped_namespace_not_enabled");
        assert_eq!(v["response"]["allowed"], true);
        assert!(v["response"]["patch"].is_string());
    }

    #[test]
    fn malformed_bodies_are_errors() {
        for body in [
            &b""[..],
            b"{",
            b"[]",
            b"{\"kind\":\"AdmissionReview\"}",
            b"{\"request\":{\"uid\":1}}",
        ] {
            assert!(parse(body).is_err(), "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn unexpected_pod_shapes_are_allowed_with_a_warning() {
        let shapes = [
            json!({ "apiVersion": "v1", "kind": "Pod", "metadata": {}, "spec": { "containers": [] } }),
            json!({ "apiVersion": "v1", "kind": "Pod", "metadata": {} }),
            json!({ "apiVersion": "v1", "kind": "Pod", "metadata": {}, "spec": { "containers": "nope" } }),
            json!({ "apiVersion": "v1", "kind": "Pod", "metadata": {}, "spec": { "containers": [{ "image": 3 }] } }),
        ];
        for shape in shapes {
            let (v, label) = answer(&review(shape.clone()), &NamespaceInfo::enabled("ml"));
            assert_eq!(label, "unexpected_shape", "{shape}");
            assert_eq!(v["response"]["allowed"], true);
            assert!(v["response"].get("patch").is_none(), "{shape}");
            assert_eq!(
                v["response"]["warnings"].as_array().map(Vec::len),
                Some(1),
                "{shape}"
            );
        }
    }

    #[test]
    fn other_kinds_and_operations_pass_through() {
        let mut r: Value = serde_json::from_slice(&review(pod())).expect("json");
        r["request"]["operation"] = json!("UPDATE");
        let (v, label) = answer(
            &serde_json::to_vec(&r).expect("json"),
            &NamespaceInfo::enabled("ml"),
        );
        assert_eq!(
            (label, v["response"]["allowed"].clone()),
            ("ignored", json!(true))
        );
        assert!(v["response"].get("patch").is_none());
    }
}
