//! Small constructors of in-memory objects for the unit tests.

use std::collections::BTreeMap;

use infermesh_crds::{
    ModelService, ModelServiceSpec,
    model_service::{Protocol, Variant},
};
use k8s_openapi::api::core::v1::{Container, Pod, PodCondition, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

/// A spec on port 8080 whose variants select `app=llm, version=<v>`.
pub fn spec_with(variants: &[(&str, i32, &str)]) -> ModelServiceSpec {
    ModelServiceSpec {
        port: 8080,
        protocol: Protocol::Http,
        variants: variants
            .iter()
            .map(|(name, weight, version)| Variant {
                name: name.to_string(),
                weight: *weight,
                selector: LabelSelector {
                    match_labels: Some(BTreeMap::from([
                        ("app".to_string(), "llm".to_string()),
                        ("version".to_string(), version.to_string()),
                    ])),
                    match_expressions: None,
                },
            })
            .collect(),
        routes: vec![],
        stickiness: None,
        retries: None,
        timeouts: None,
        load_balancing: None,
        concurrency: None,
        outlier_detection: None,
    }
}

/// A ModelService named `name` in `ns` at generation 1.
pub fn model_service(name: &str, ns: &str, spec: ModelServiceSpec) -> ModelService {
    let mut ms = ModelService::new(name, spec);
    ms.metadata.namespace = Some(ns.to_string());
    ms.metadata.generation = Some(1);
    ms.metadata.uid = Some(format!("uid-{name}"));
    ms
}

/// A pod labelled `app=llm, version=<version>`.
pub fn pod(
    name: &str,
    ns: &str,
    version: &str,
    ip: Option<&str>,
    ready: bool,
    meshed: bool,
) -> Pod {
    let mut containers = vec![Container {
        name: "model".into(),
        ..Default::default()
    }];
    if meshed {
        containers.push(Container {
            name: infermesh_crds::SIDECAR_CONTAINER.into(),
            ..Default::default()
        });
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(BTreeMap::from([
                ("app".to_string(), "llm".to_string()),
                ("version".to_string(), version.to_string()),
            ])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers,
            ..Default::default()
        }),
        status: Some(PodStatus {
            pod_ip: ip.map(str::to_string),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}
