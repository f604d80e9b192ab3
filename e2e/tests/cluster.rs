//! The cluster itself: the node is Ready, a Deployment of a project-built image runs two pods
//! with pod IPs, and a third pod reaches them through the Service's DNS name.

use std::collections::BTreeSet;

use infermesh_e2e::{
    TestNamespace, client_or_skip, delete_namespace, logs, wait_finished, wait_ready_pods,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;

const IMAGE: &str = "infermesh/examples:0.1.0";

#[tokio::test]
async fn node_is_ready() -> anyhow::Result<()> {
    let Some(client) = client_or_skip("node_is_ready").await? else {
        return Ok(());
    };
    let nodes = Api::<Node>::all(client)
        .list(&ListParams::default())
        .await?;
    assert!(!nodes.items.is_empty(), "the cluster has no node");
    for node in &nodes.items {
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        assert!(ready, "node {:?} is not Ready", node.metadata.name);
    }
    Ok(())
}

#[tokio::test]
async fn deployment_is_reached_through_service_dns() -> anyhow::Result<()> {
    let Some(client) = client_or_skip("deployment_is_reached_through_service_dns").await? else {
        return Ok(());
    };
    let ns = TestNamespace::create(&client, "e2e-cluster").await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pp = PostParams::default();

    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "model"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "model"}},
            "template": {
                "metadata": {"labels": {"app": "model"}},
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{
                        "name": "model",
                        "image": IMAGE,
                        "imagePullPolicy": "Never",
                        "args": ["--port", "8080", "--version", "v1"],
                        "ports": [{"containerPort": 8080, "name": "http"}],
                        "readinessProbe": {"httpGet": {"path": "/health", "port": 8080},
                                           "periodSeconds": 1}
                    }]
                }
            }
        }
    }))?;
    deployments.create(&pp, &deployment).await?;
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "model"},
        "spec": {"selector": {"app": "model"},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))?;
    services.create(&pp, &service).await?;

    let ready = wait_ready_pods(&pods, "app=model", 2).await?;
    let names: BTreeSet<String> = ready
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let ips: BTreeSet<String> = ready
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    assert_eq!(ips.len(), 2, "two distinct pod IPs expected, got {ips:?}");
    for ip in &ips {
        assert!(
            ip.starts_with("198.18.64."),
            "pod IP {ip} outside the pod CIDR"
        );
    }

    let url = format!("http://model.{}/", ns.name);
    let client_pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "client"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "client",
                "image": IMAGE,
                "imagePullPolicy": "Never",
                "command": ["/usr/local/bin/infermesh-client", "get", url]
            }]
        }
    }))?;
    pods.create(&pp, &client_pod).await?;
    let phase = wait_finished(&pods, "client").await?;
    let out = logs(&pods, "client").await?;
    assert_eq!(phase, "Succeeded", "client pod failed; its output:\n{out}");
    assert!(out.contains(" 200"), "no 200 status line in:\n{out}");
    assert!(out.contains("\"version\":\"v1\""), "no version in:\n{out}");
    assert!(
        names.iter().any(|n| out.contains(n.as_str())),
        "answer not from one of {names:?}:\n{out}"
    );

    delete_namespace(&client, &ns.name).await?;
    Ok(())
}
