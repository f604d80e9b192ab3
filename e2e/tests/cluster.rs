//! The cluster itself: the node is Ready, a Deployment of a project-built image runs two pods
//! with pod IPs, and a third pod reaches them through the Service's DNS name.

use std::collections::BTreeSet;
use std::time::Duration;

use infermesh_e2e::{
    TestNamespace, client_or_skip, delete_namespace, logs, wait_finished, wait_ready_pods,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;

const IMAGE: &str = "infermesh/examples:0.1.0";
const CLIENT_ATTEMPTS: usize = 3;

/// Waits until the Service's EndpointSlices list `count` ready endpoints.
async fn wait_ready_endpoints(
    slices: &Api<EndpointSlice>,
    service: &str,
    count: usize,
) -> anyhow::Result<()> {
    let selector = format!("kubernetes.io/service-name={service}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let list = slices
            .list(&ListParams::default().labels(&selector))
            .await?;
        let ready = list
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .count();
        if ready >= count {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "service {service}: {ready} ready endpoints after 60s, {count} expected"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

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
    // Real pod-network addresses: valid IPs, none of them a node's own address (which is what
    // a host-network pod would show). Holds on the local cluster and on kind alike.
    let node_ips: BTreeSet<String> = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(|n| n.status.as_ref()?.addresses.clone())
        .flatten()
        .map(|a| a.address)
        .collect();
    for ip in &ips {
        assert!(
            ip.parse::<std::net::IpAddr>().is_ok(),
            "pod IP {ip} is not an IP"
        );
        assert!(!node_ips.contains(ip), "pod IP {ip} is a node address");
    }

    // The Service answers once its endpoints are ready and kube-proxy has programmed them;
    // until then a connection is refused. Wait for the endpoints, then give the proxy a few
    // attempts (a fresh client pod each) to catch up.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns.name);
    wait_ready_endpoints(&slices, "model", 2).await?;
    let url = format!("http://model.{}/", ns.name);
    let mut failures = Vec::new();
    let mut out = String::new();
    for attempt in 1..=CLIENT_ATTEMPTS {
        let name = format!("client-{attempt}");
        let client_pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "client",
                    "image": IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["/usr/local/bin/infermesh-client", "get", &url]
                }]
            }
        }))?;
        pods.create(&pp, &client_pod).await?;
        let phase = wait_finished(&pods, &name).await?;
        out = logs(&pods, &name).await?;
        if phase == "Succeeded" {
            break;
        }
        eprintln!("{name} did not reach {url} ({phase}): {}", out.trim());
        failures.push(format!("{name}: {phase}: {}", out.trim()));
        out.clear();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(
        !out.is_empty(),
        "no client pod reached {url} in {CLIENT_ATTEMPTS} attempts:\n{}",
        failures.join("\n")
    );
    assert!(out.contains(" 200"), "no 200 status line in:\n{out}");
    assert!(out.contains("\"version\":\"v1\""), "no version in:\n{out}");
    assert!(
        names.iter().any(|n| out.contains(n.as_str())),
        "answer not from one of {names:?}:\n{out}"
    );

    delete_namespace(&client, &ns.name).await?;
    Ok(())
}
