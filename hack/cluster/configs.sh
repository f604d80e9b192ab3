#!/usr/bin/env bash
# Writes the configuration files of containerd, CNI, kubelet, kube-proxy and CoreDNS under
# build/cluster/etc. Regenerated on every `up` so they always match this checkout's paths.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ETC="${CLUSTER}/etc"
mkdir -p "${ETC}/cni" "${RUN}" "${LOGS}"

cat > "${ETC}/containerd.toml" <<CFG
version = 2
root = "${CLUSTER}/containerd"
state = "${RUN}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "${CONTAINERD_SOCK}"

[ttrpc]
  address = "${CONTAINERD_SOCK}.ttrpc"

[debug]
  address = "${CONTAINERD_SOCK}.debug"

[plugins."io.containerd.internal.v1.opt"]
  path = "${CLUSTER}/containerd-opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/infermesh/pause:0.1.0"
  # Processes here lack CAP_SYS_RESOURCE: without this every sandbox fails in runc.
  restrict_oom_score_adj = true
  enable_cdi = false
  # Pod network namespaces under the state dir, not /var/run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "${RUN}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "${ETC}/cni"
CFG

cat > "${ETC}/cni/10-infermesh.conflist" <<CFG
{
  "cniVersion": "1.0.0",
  "name": "infermesh",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${CNI_BRIDGE}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "${RUN}/cni-ipam",
        "ranges": [[{"subnet": "${POD_CIDR}"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
CFG

cat > "${ETC}/kubelet.yaml" <<CFG
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ${NODE_IP}
port: 10250
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "${PKI}/ca.crt"}
authorization: {mode: Webhook}
tlsCertFile: "${PKI}/kubelet-serving.crt"
tlsPrivateKeyFile: "${PKI}/kubelet-serving.key"
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
clusterDNS: ["${DNS_SERVICE_IP}"]
clusterDomain: ${CLUSTER_DOMAIN}
containerRuntimeEndpoint: "unix://${CONTAINERD_SOCK}"
resolvConf: "${ETC}/resolv.conf"
podCIDR: "${POD_CIDR}"
maxPods: 200
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
  imagefs.inodesFree: "1%"
rotateCertificates: false
serverTLSBootstrap: false
CFG
# Pods resolve through the cluster DNS only: nothing outside the machine is asked.
printf 'nameserver %s\n' "${DNS_SERVICE_IP}" > "${ETC}/resolv.conf"

cat > "${ETC}/kube-proxy.yaml" <<CFG
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: "${PKI}/kube-proxy.kubeconfig"
mode: iptables
clusterCIDR: "${POD_CIDR}"
hostnameOverride: ${NODE_NAME}
bindAddress: ${NODE_IP}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
iptables:
  localhostNodePorts: false
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
CFG

cat > "${ETC}/Corefile" <<CFG
.:53 {
    bind ${NODE_IP}
    errors
    kubernetes ${CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {
        kubeconfig ${PKI}/coredns.kubeconfig infermesh
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    cache 5
    loadbalance
}
CFG
