#!/usr/bin/env bash
# What both demos (hack/demo.sh, hack/demo-llm.sh) start with: the cluster (the local one, or
# DEMO_KUBECONFIG's), the images built and imported, and infermesh installed from
# deploy/overlays/local and admitting pods. Sourced; defines step/run/fail/k and demo_setup.
source "$(dirname "${BASH_SOURCE[0]}")/cluster/lib.sh"
START=$SECONDS
step() { printf '\n==> [%3ss] %s\n' "$((SECONDS - START))" "$*"; }
run() { printf '    $ %s\n' "$*" >&2; "$@"; }
fail() { printf '\ndemo: FAILED: %s\n' "$*" >&2; exit 1; }

demo_setup() {
  if [[ -n "${DEMO_KUBECONFIG:-}" ]]; then
    export KUBECONFIG="${DEMO_KUBECONFIG}"
    KUBECTL="$(command -v kubectl)"
    [[ -x "${BIN}/kubectl" ]] && KUBECTL="${BIN}/kubectl"
    step "using the running cluster of DEMO_KUBECONFIG=${KUBECONFIG}"
  else
    export KUBECONFIG="${KUBECONFIG_PATH}"
    KUBECTL="${BIN}/kubectl"
    step "local Kubernetes cluster up (hack/cluster/up; returns at once when it runs)"
    "${REPO_ROOT}/hack/cluster/up" >/dev/null
  fi
  k() { "${KUBECTL}" "$@"; }
  run k get nodes

  step "images built (static musl binaries, no Docker) and imported into the node's containerd"
  "${REPO_ROOT}/hack/images.sh"

  step "infermesh installed: CRD, operator, webhook (kubectl apply -k deploy/overlays/local)"
  run k apply -k "${REPO_ROOT}/deploy/overlays/local" | sed 's/^/    /'
  run k wait --for=condition=Established --timeout=60s crd/modelservices.infermesh.io >/dev/null
  run k -n infermesh-system rollout status deployment/infermesh-operator --timeout=180s
  run k -n infermesh-system rollout status deployment/infermesh-webhook --timeout=180s
  # The webhook writes its CA into the configuration once it has a certificate.
  for _ in $(seq 60); do
    [[ -n "$(k get mutatingwebhookconfiguration infermesh-webhook \
      -o jsonpath='{.webhooks[*].clientConfig.caBundle}' 2>/dev/null)" ]] && break
    sleep 1
  done
  # Right after the rollout the webhook's Service may refuse connections for a moment (kube-proxy
  # has not programmed it yet): wait until a pod in an injecting namespace passes admission (a
  # server-side dry run creates nothing).
  k create namespace infermesh-admission-probe >/dev/null 2>&1 || true
  k label namespace infermesh-admission-probe infermesh.io/inject=enabled --overwrite >/dev/null
  k annotate namespace infermesh-admission-probe infermesh.io/inject=enabled --overwrite >/dev/null
  for i in $(seq 60); do
    k -n infermesh-admission-probe run admission-probe --image=infermesh/pause:0.1.0 \
      --restart=Never --dry-run=server -o name >/dev/null 2>&1 && break
    [[ $i -eq 60 ]] && { echo "demo: the webhook did not admit pods within 60s (kubectl -n infermesh-system logs deploy/infermesh-webhook)" >&2; exit 1; }
    sleep 1
  done
  k delete namespace infermesh-admission-probe --wait=false >/dev/null
}

# wait_injection_label NS: the webhook mirrors the namespace annotation onto the label its
# configuration selects on; pods created before that would start without a sidecar.
wait_injection_label() {
  for _ in $(seq 30); do
    [[ "$(k get ns "$1" -o jsonpath='{.metadata.labels.infermesh\.io/inject}')" == enabled ]] && return 0
    sleep 1
  done
}
