#!/usr/bin/env bash
# Benchmark: apply N ModelServices (default 500) in one namespace and report the time until all are
# Ready and the operator's peak RSS (VmHWM from /proc). Needs KUBECONFIG and the project's kubectl
# (KUBECTL, else build/bin/kubectl, else kubectl on PATH). Runs a release build of the operator as a
# host process scoped to a throwaway namespace `operator-e2e-bench-<pid>`, removed at the end.
#
#   KUBECONFIG=... operator/bench/modelservices.sh [N]
set -euo pipefail

N="${1:-500}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
KUBECTL="${KUBECTL:-}"
if [[ -z "$KUBECTL" ]]; then
  if [[ -x "$ROOT/build/bin/kubectl" ]]; then KUBECTL="$ROOT/build/bin/kubectl"; else KUBECTL=kubectl; fi
fi
: "${KUBECONFIG:?set KUBECONFIG to the cluster to benchmark against}"
NS="operator-e2e-bench-$$"
WORK="$(mktemp -d)"
OP_PID=""

k() { "$KUBECTL" "$@"; }

cleanup() {
  set +e
  if [[ -n "$OP_PID" ]] && kill -0 "$OP_PID" 2>/dev/null; then
    # Let the operator run its finalizers, then stop it.
    k delete msvc --all -n "$NS" --timeout=120s >/dev/null 2>&1
    kill "$OP_PID" 2>/dev/null
    wait "$OP_PID" 2>/dev/null
  fi
  k delete namespace "$NS" --wait=false >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT

# INFERMESH_OPERATOR_BIN: a prebuilt operator binary; else a release build of this checkout.
BIN="${INFERMESH_OPERATOR_BIN:-}"
if [[ -z "$BIN" ]]; then
  echo "building infermesh-operator (release)..." >&2
  (cd "$ROOT" && cargo build -q --release -p infermesh-operator --target-dir "$ROOT/target/bench")
  BIN="$ROOT/target/bench/release/infermesh-operator"
fi

k apply --server-side --force-conflicts -f "$ROOT/deploy/crds/modelservice.yaml" >/dev/null
k wait --for=condition=Established --timeout=60s crd/modelservices.infermesh.io >/dev/null
k create namespace "$NS" >/dev/null

# Two Ready pods that every ModelService's variants select.
IMAGE="infermesh/pause:0.1.0"
k apply -n "$NS" -f - >/dev/null <<EOF
{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"bench"},
 "spec":{"replicas":2,"selector":{"matchLabels":{"app":"bench"}},
  "template":{"metadata":{"labels":{"app":"bench","version":"v1"}},
   "spec":{"terminationGracePeriodSeconds":1,
    "containers":[{"name":"model","image":"$IMAGE","imagePullPolicy":"Never"}]}}}}
EOF
k rollout status -n "$NS" deployment/bench --timeout=120s >/dev/null

"$BIN" --namespace "$NS" --no-leader-election --admin-addr 127.0.0.1:0 \
  >"$WORK/operator.log" 2>&1 &
OP_PID=$!
sleep 2
kill -0 "$OP_PID" || { cat "$WORK/operator.log"; exit 1; }

# N ModelServices in one List document.
{
  echo '{"apiVersion":"v1","kind":"List","items":['
  for i in $(seq 1 "$N"); do
    [[ $i -gt 1 ]] && echo ','
    printf '{"apiVersion":"infermesh.io/v1alpha1","kind":"ModelService","metadata":{"name":"bench-%d"},' "$i"
    printf '"spec":{"port":8080,"variants":[{"name":"stable","weight":90,"selector":{"matchLabels":{"app":"bench","version":"v1"}}},'
    printf '{"name":"canary","weight":10,"selector":{"matchLabels":{"app":"bench"}}}],'
    printf '"retries":{"attempts":2,"retryOn":["gateway-error"]},"timeouts":{"idle":"30s"}}}'
  done
  echo ']}'
} >"$WORK/msvcs.json"

start=$(date +%s.%N)
k create -n "$NS" -f "$WORK/msvcs.json" >/dev/null
applied=$(date +%s.%N)
ready=0
deadline=$(( $(date +%s) + 600 ))
while (( $(date +%s) < deadline )); do
  ready=$(k get msvc -n "$NS" -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c '^True$' || true)
  [[ "$ready" -ge "$N" ]] && break
  sleep 0.5
done
done_at=$(date +%s.%N)
peak_kb=$(awk '/VmHWM/ {print $2}' "/proc/$OP_PID/status")
rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$OP_PID/status")
cm_bytes=$(k get configmap infermesh-mesh-config -n "$NS" -o jsonpath='{.data.mesh\.json}' | wc -c)

awk -v n="$N" -v r="$ready" -v s="$start" -v a="$applied" -v d="$done_at" -v p="$peak_kb" -v c="$rss_kb" -v b="$cm_bytes" 'BEGIN {
  printf "modelservices: %d, ready: %d\n", n, r
  printf "create (kubectl, %d objects): %.1f s\n", n, a - s
  printf "time from first create to all Ready: %.1f s\n", d - s
  printf "operator peak RSS (VmHWM): %.1f MiB, RSS now: %.1f MiB\n", p / 1024, c / 1024
  printf "mesh.json size: %.0f KiB\n", b / 1024
}'
[[ "$ready" -ge "$N" ]] || { echo "not all ModelServices became Ready" >&2; tail -20 "$WORK/operator.log" >&2; exit 1; }
