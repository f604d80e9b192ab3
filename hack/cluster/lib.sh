# Shared settings and functions of the local cluster scripts (sourced, not run).
# Every path the cluster writes lives under $BUILD (the checkout's build/ dir) or the
# version-keyed binary cache, so `down` can find and remove all of it.

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="${REPO_ROOT}/build"
CLUSTER="${BUILD}/cluster"
LOGS="${CLUSTER}/logs"
RUN="${CLUSTER}/run"
PKI="${CLUSTER}/pki"
BIN="${BUILD}/bin"

K8S_VERSION="v1.34.4"
COREDNS_VERSION="v1.15.0"
CACHE_ROOT="${XDG_CACHE_HOME:-${HOME}/.cache}/infermesh"
K8S_CACHE="${CACHE_ROOT}/kubernetes-${K8S_VERSION}"
COREDNS_CACHE="${CACHE_ROOT}/coredns-${COREDNS_VERSION}"

# Addresses: all inside 198.18.0.0/15 (RFC 2544), never private ranges.
NODE_BRIDGE="infermesh0"
NODE_IP="198.18.0.1"
NODE_CIDR="198.18.0.1/24"
CNI_BRIDGE="imcni0"
POD_CIDR="198.18.64.0/24"
SERVICE_CIDR="198.19.0.0/16"
API_SERVICE_IP="198.19.0.1"
DNS_SERVICE_IP="198.19.0.10"
LEAK_GUARD_CIDRS=("198.18.0.0/15")
CLUSTER_DOMAIN="cluster.local"
NODE_NAME="infermesh-node"

CONTAINERD_SOCK="${RUN}/containerd/containerd.sock"
KUBECONFIG_PATH="${CLUSTER}/kubeconfig"

# Components in start order; `down` stops them in reverse.
COMPONENTS=(containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy coredns)
# Ports the cluster listens on, with their owner, checked before start and after stop.
PORTS=("2379:etcd" "2380:etcd" "6443:kube-apiserver" "10257:kube-controller-manager"
  "10259:kube-scheduler" "10250:kubelet" "10248:kubelet" "10256:kube-proxy" "10249:kube-proxy"
  "53:coredns" "9153:coredns" "8181:coredns")

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }

pidfile() { echo "${RUN}/$1.pid"; }

# Prints the pid of a running component, or nothing.
component_pid() {
  local f pid
  f="$(pidfile "$1")"
  [[ -f "$f" ]] || return 0
  pid="$(cat "$f" 2>/dev/null || true)"
  # A pid file can outlive its process and the pid be reused: check it is still ours.
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && is_ours "$pid" && echo "$pid"
  return 0
}

kubectl_() { "${BIN}/kubectl" --kubeconfig "${KUBECONFIG_PATH}" "$@"; }

# is_ours PID: the process belongs to this checkout's cluster (its command line names it).
is_ours() {
  local cmd
  cmd="$(tr '\0' ' ' 2>/dev/null < "/proc/$1/cmdline" || true)"
  [[ "$cmd" == *"${CLUSTER}"* || "$cmd" == *"${BIN}/"* ]]
}

# port_holders: one line "PORT OWNER PID COMMAND" per listener on a cluster port that is not
# this checkout's cluster (another program, or a cluster of another checkout).
port_holders() {
  local entry port owner pid
  for entry in "${PORTS[@]}"; do
    port="${entry%%:*}"; owner="${entry#*:}"
    for pid in $(ss -Hltnup "sport = :${port}" 2>/dev/null | grep -oE 'pid=[0-9]+' | cut -d= -f2 | sort -u); do
      is_ours "$pid" && continue
      echo "${port} ${owner} ${pid} $(tr '\0' ' ' 2>/dev/null < "/proc/${pid}/cmdline" | cut -c1-120)"
    done
    # A listener whose process is not visible (another pid namespace) still blocks the port.
    if [[ -n "$(ss -Hltnu "sport = :${port}" 2>/dev/null)" ]] && \
       [[ -z "$(ss -Hltnup "sport = :${port}" 2>/dev/null | grep -oE 'pid=[0-9]+')" ]]; then
      echo "${port} ${owner} ? (process not visible)"
    fi
  done
  return 0
}
