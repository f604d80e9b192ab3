#!/usr/bin/env bash
# The demo, first cut: starts the local cluster, shows the node Ready and runs a pod on it.
# The cluster is left running; `make cluster-down` stops it.
source "$(dirname "${BASH_SOURCE[0]}")/cluster/lib.sh"
step() { printf '\n==> %s\n' "$*"; }
export KUBECONFIG="${KUBECONFIG_PATH}"

step "starting the local Kubernetes cluster (hack/cluster/up)"
"${REPO_ROOT}/hack/cluster/up" >/dev/null

step "kubectl get nodes"
kubectl_ get nodes -o wide

step "running a pod (image infermesh/pause:0.1.0, built locally) in namespace infermesh-demo"
kubectl_ create namespace infermesh-demo --dry-run=client -o yaml | kubectl_ apply -f - >/dev/null
kubectl_ -n infermesh-demo delete pod hello --ignore-not-found --wait=true >/dev/null
until kubectl_ -n infermesh-demo get serviceaccount default >/dev/null 2>&1; do sleep 0.5; done
kubectl_ -n infermesh-demo run hello --image=infermesh/pause:0.1.0 --image-pull-policy=Never \
  --restart=Never >/dev/null
kubectl_ -n infermesh-demo wait --for=condition=Ready pod/hello --timeout=90s >/dev/null
kubectl_ -n infermesh-demo get pods -o wide

step "done: the cluster stays up"
echo "  export KUBECONFIG=${KUBECONFIG_PATH}"
echo "  export PATH=${BIN}:\$PATH      # the project's kubectl"
echo "  kubectl get pods -A            # look around"
echo "  make cluster-down              # stop it and remove everything it made"
