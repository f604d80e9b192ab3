#!/usr/bin/env bash
# The demo (`make demo`): a canary split happening on a real cluster, every step printed.
#   1. the local cluster up (reused when it runs), 2. images built and imported,
#   3. infermesh installed (kubectl apply -k deploy/overlays/local) and rolled out,
#   4. the example model applied (examples/manifests: namespace with injection on, llm-v1 x2,
#      llm-v2 x1, ModelService llm 90/10 with a beta route and retries), waited for Ready,
#   5. 1000 requests through the ModelService's Service from a client Job: split measured,
#   6. a header route and an SSE stream arriving token by token through the mesh,
#   7. kubectl patch to 50/50 and the split measured again.
# Everything stays up afterwards; the last lines say how to look around and tear down.
# DEMO_KUBECONFIG=PATH runs it against a running cluster instead of starting the local one
# (images are imported into the containerd at CONTAINERD_ADDRESS); DEMO_NAMESPACE (default
# infermesh-demo) and DEMO_REQUESTS (default 1000) change the namespace and the request count.
NS="${DEMO_NAMESPACE:-infermesh-demo}"
REQUESTS="${DEMO_REQUESTS:-1000}"
source "$(dirname "${BASH_SOURCE[0]}")/demo-lib.sh"
demo_setup

# The examples as they are, or moved to DEMO_NAMESPACE by a generated kustomization.
EX="${REPO_ROOT}/examples/manifests"
if [[ "${NS}" != infermesh-demo ]]; then
  EX="${BUILD}/demo/${NS}"
  mkdir -p "${EX}"
  printf 'namespace: %s\nresources: ["%s"]\n' "${NS}" \
    "$(realpath --relative-to="${EX}" "${REPO_ROOT}/examples/manifests")" \
    > "${EX}/kustomization.yaml"
fi
step "the example model: namespace ${NS} (injection on), llm-v1 x2, llm-v2 x1, ModelService llm 90/10"
# Server-side apply with force: a second run puts back the 90/10 of the file after the patch below.
run k apply --server-side --force-conflicts -k "${EX}" | sed 's/^/    /'
wait_injection_label "${NS}"
# Pods from a run without the sidecar (e.g. webhook not up yet) are replaced.
if k -n "${NS}" get pods -l app=llm -o jsonpath='{range .items[*]}{.metadata.name} {.spec.initContainers[*].name}{"\n"}{end}' \
  | grep -v infermesh-sidecar | grep -q .; then
  run k -n "${NS}" rollout restart deployment/llm-v1 deployment/llm-v2
fi
run k -n "${NS}" rollout status deployment/llm-v1 --timeout=180s
run k -n "${NS}" rollout status deployment/llm-v2 --timeout=180s
run k -n "${NS}" wait --for=condition=Ready msvc/llm --timeout=120s >/dev/null
run k -n "${NS}" get pods -l app=llm \
  -o custom-columns='POD:.metadata.name,VERSION:.metadata.labels.version,CONTAINERS:.spec.containers[*].name,SIDECAR:.spec.initContainers[*].name,READY:.status.conditions[?(@.type=="Ready")].status'
run k -n "${NS}" get msvc llm -o wide

# Every sidecar enforces the mesh config's current revision before traffic is measured.
wait_revision() {
  local want pods p got
  for _ in $(seq 60); do
    want="$(k -n "${NS}" get configmap infermesh-mesh-config -o jsonpath='{.metadata.annotations.infermesh\.io/revision}')"
    got=1
    pods="$(k -n "${NS}" get pods -l app=llm -o jsonpath='{range .items[?(@.status.phase=="Running")]}{.metadata.name}{"\n"}{end}')"
    for p in ${pods}; do
      k -n "${NS}" exec "$p" -c model -- /usr/local/bin/infermesh-client get http://127.0.0.1:15020/config \
        2>/dev/null | grep -q "\"revision\":\"${want}\"" || got=0
    done
    ((got)) && [[ -n "$want" ]] && { echo "    every sidecar enforces mesh config revision ${want}"; return 0; }
    sleep 1
  done
  fail "the sidecars did not load mesh config revision ${want} within 60s"
}

# measure LABEL STABLE% CANARY%: runs the client Job, prints measured vs configured.
measure() {
  local out v1 v2 total errors
  k -n "${NS}" delete job llm-client --ignore-not-found --wait=true >/dev/null
  sed "s/--requests=1000/--requests=${REQUESTS}/" "${REPO_ROOT}/examples/manifests/client-job.yaml" \
    | run k -n "${NS}" apply -f - | sed 's/^/    /'
  if ! run k -n "${NS}" wait --for=condition=Complete job/llm-client --timeout=300s >/dev/null; then
    k -n "${NS}" logs job/llm-client -c client >&2 || true
    fail "the client Job did not complete (see above)"
  fi
  out="$(k -n "${NS}" logs job/llm-client -c client | tail -1)"
  echo "    client: ${out}"
  read -r total errors v1 v2 < <(python3 -c '
import json, sys
d = json.loads(sys.argv[1]); b = d.get("byVersion", {})
print(d["total"], d["errors"], b.get("v1", 0), b.get("v2", 0))' "$out")
  python3 - "$1" "$2" "$3" "$total" "$errors" "$v1" "$v2" <<'EOF'
import sys
label, ws, wc, total, errors, v1, v2 = sys.argv[1], *map(int, sys.argv[2:])
print(f"    {label}: {total} requests, {errors} errors")
print(f"    {'variant':<16}{'configured':>12}{'measured':>12}{'requests':>10}")
for name, want, got in (("stable (v1)", ws, v1), ("canary (v2)", wc, v2)):
    print(f"    {name:<16}{want:>11}%{100 * got / max(total, 1):>11.1f}%{got:>10}")
bad = errors or any(abs(100 * g / max(total, 1) - w) > 3 for w, g in ((ws, v1), (wc, v2)))
sys.exit(1 if bad else 0)
EOF
}

step "${REQUESTS} requests through the ModelService's Service (http://llm) from a client Job"
wait_revision
measure "split 90/10" 90 10 || fail "the measured split is not within 3% of 90/10"

step "a header route: x-user-cohort: beta always goes to the canary"
k -n "${NS}" delete pod llm-beta --ignore-not-found --wait=true >/dev/null
run k -n "${NS}" run llm-beta --image=infermesh/examples:0.1.0 --image-pull-policy=IfNotPresent \
  --restart=Never --command -- /usr/local/bin/infermesh-client load http://llm/ --requests=50 \
  --concurrency=5 -H 'x-user-cohort: beta' >/dev/null
k -n "${NS}" wait --for=jsonpath='{.status.phase}'=Succeeded pod/llm-beta --timeout=120s >/dev/null \
  || fail "the beta client did not succeed: $(k -n "${NS}" logs llm-beta -c llm-beta 2>&1 | tail -3)"
echo "    client: $(k -n "${NS}" logs llm-beta -c llm-beta | tail -1)"
k -n "${NS}" delete pod llm-beta --wait=false >/dev/null

step "an SSE stream through the mesh, token by token (ms since the request started)"
k -n "${NS}" delete pod llm-stream --ignore-not-found --wait=true >/dev/null
run k -n "${NS}" run llm-stream --image=infermesh/examples:0.1.0 --image-pull-policy=IfNotPresent \
  --restart=Never --command -- /usr/local/bin/infermesh-client stream http://llm/v1/chat/completions \
  --body '{"messages":[{"role":"user","content":"stream me through the mesh"}],"max_tokens":12,"stream":true}' \
  >/dev/null
k -n "${NS}" wait --for=jsonpath='{.status.phase}'=Succeeded pod/llm-stream --timeout=120s >/dev/null \
  || fail "the stream client did not succeed: $(k -n "${NS}" logs llm-stream -c llm-stream 2>&1 | tail -3)"
k -n "${NS}" logs llm-stream -c llm-stream | cut -c1-150 | sed 's/^/    /'
k -n "${NS}" delete pod llm-stream --wait=false >/dev/null

step "shifting the canary to 50/50 with kubectl patch"
run k -n "${NS}" patch msvc llm --type=json -p \
  '[{"op":"replace","path":"/spec/variants/0/weight","value":50},{"op":"replace","path":"/spec/variants/1/weight","value":50}]'
for _ in $(seq 60); do
  [[ "$(k -n "${NS}" get msvc llm -o jsonpath='{.status.observedGeneration}/{.status.variantWeights}')" \
    == "$(k -n "${NS}" get msvc llm -o jsonpath='{.metadata.generation}')/stable=50,canary=50" ]] && break
  sleep 1
done
run k -n "${NS}" get msvc llm -o wide
wait_revision
measure "split 50/50" 50 50 || fail "the measured split is not within 3% of 50/50"

pod="$(k -n "${NS}" get pods -l app=llm,version=v1 -o jsonpath='{.items[0].metadata.name}')"
step "done in $((SECONDS - START))s: infermesh and the example stay up. Look around:"
cat <<EOF
    export KUBECONFIG=${KUBECONFIG} PATH=$(dirname "${KUBECTL}"):\$PATH
    kubectl -n ${NS} get msvc -o wide                 # READY, VARIANTS, ENDPOINTS, REVISION
    kubectl -n ${NS} describe msvc llm                # conditions, per-variant endpoints, events
    kubectl -n ${NS} get configmap infermesh-mesh-config -o jsonpath='{.data.mesh\.json}'
    # a sidecar's metrics and config (its admin port 15020, read from the model container):
    kubectl -n ${NS} exec ${pod} -c model -- /usr/local/bin/infermesh-client get http://127.0.0.1:15020/metrics
    kubectl -n ${NS} exec ${pod} -c model -- /usr/local/bin/infermesh-client get http://127.0.0.1:15020/config
    kubectl -n ${NS} port-forward pod/${pod} 15020:15020   # then http://127.0.0.1:15020/metrics
    kubectl -n ${NS} patch msvc llm --type=json -p '[{"op":"replace","path":"/spec/variants/0/weight","value":100},{"op":"replace","path":"/spec/variants/1/weight","value":0}]'
  Tear down:
    kubectl delete namespace ${NS}                     # the example
    kubectl delete -k deploy/overlays/local            # infermesh (CRD, operator, webhook)
    make cluster-down                                  # the local cluster
EOF
