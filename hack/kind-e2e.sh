#!/usr/bin/env bash
# The e2e suite on a kind cluster (`make kind-e2e`), for machines with Docker: creates the kind
# cluster infermesh-e2e (reused when it exists), builds the images with docker build, loads them
# with `kind load docker-image`, installs deploy/overlays/kind, runs `cargo test -p
# infermesh-e2e` against it, then uninstalls. Where kind or a working Docker engine is missing
# it says so and exits 0 (the local cluster path, `make test`, is what CI runs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CLUSTER="${KIND_CLUSTER:-infermesh-e2e}"
skip() { echo "kind-e2e: skipped: $*"; echo "kind-e2e: the same suite runs on the local cluster with \`make test\`."; exit 0; }
command -v kind >/dev/null 2>&1 || skip "kind is not installed (https://kind.sigs.k8s.io)"
command -v docker >/dev/null 2>&1 || skip "docker is not installed"
docker info >/dev/null 2>&1 || skip "the Docker engine does not answer (docker info failed)"
KUBECTL="$(command -v kubectl || true)"
[[ -x build/bin/kubectl ]] && KUBECTL="$PWD/build/bin/kubectl"
[[ -n "${KUBECTL}" ]] || skip "no kubectl (make cluster-up builds build/bin/kubectl)"

step() { printf '\n==> %s\n' "$*"; }
step "kind cluster ${CLUSTER}"
kind get clusters 2>/dev/null | grep -qx "${CLUSTER}" || kind create cluster --name "${CLUSTER}" --wait 120s
export KUBECONFIG="${PWD}/build/kind/kubeconfig"
mkdir -p build/kind
kind get kubeconfig --name "${CLUSTER}" > "${KUBECONFIG}"

step "images: docker build + kind load docker-image"
for img in operator webhook sidecar examples; do
  file="deploy/docker/${img}.Dockerfile"
  [[ "${img}" == examples ]] && file=examples/Dockerfile
  docker build -q -f "${file}" -t "infermesh/${img}:0.1.0" .
  kind load docker-image --name "${CLUSTER}" "infermesh/${img}:0.1.0"
done
docker image ls 'infermesh/*' --format '{{.Repository}}:{{.Tag}}  {{.Size}}'

step "install check: kubectl apply -k deploy/overlays/kind (server dry run)"
"${KUBECTL}" apply --dry-run=server -k deploy/overlays/kind >/dev/null 2>&1 \
  || echo "(dry run needs the namespace and CRD first; the e2e suite checks every manifest)"

# The webhook tests serve from this host in local mode: the kind node reaches the host at the
# IPv4 gateway of the docker network "kind".
gw="$(docker network inspect kind -f '{{range .IPAM.Config}}{{.Gateway}} {{end}}' | tr ' ' '\n' | grep -m1 -E '^[0-9.]+$' || true)"
step "e2e suite against kind (KUBECONFIG=${KUBECONFIG}, webhook host ${gw:-unknown})"
INFERMESH_E2E_WEBHOOK_HOST="${gw}" KUBECTL="${KUBECTL}" cargo test -p infermesh-e2e --locked -- --test-threads=1
echo "kind-e2e: passed. Delete the cluster with: kind delete cluster --name ${CLUSTER}"
