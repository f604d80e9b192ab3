#!/usr/bin/env bash
# Loopback smoke test of the real LLM engine (hack/llama-server.sh): starts llama-server with
# the SmolLM2-135M model on 127.0.0.1, waits for /health, streams a chat completion with
# stream_options.include_usage and checks the SSE chunks (content deltas, a final usage with
# prompt_tokens_details.cached_tokens, [DONE]), repeats it to see the prompt cache hit, reads
# /metrics and prints the llamacpp:* metric names and the measured prompt/generation tokens/s.
# Exits non-zero on any failure; the server is always stopped. Every wait is bounded.
#
# LLAMA_SERVER / LLAMA_MODEL: use these files instead of running hack/llama-server.sh.
# LLAMA_IMAGE=build/images/llama-server.tar: test the image instead: its layer is extracted and
# the server run from it with chroot as the image's user 65532 (needs root), which shows the
# rootfs alone (no libc in it) is enough.
# PORT (default: the first free of 18480-18499), THREADS (2), READY_TIMEOUT (60 s),
# REQUEST_TIMEOUT (120 s), KEEP_LOGS=1 keeps the work directory with the server log and responses.
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/cluster/lib.sh"

THREADS="${THREADS:-2}"
READY_TIMEOUT="${READY_TIMEOUT:-60}"
REQUEST_TIMEOUT="${REQUEST_TIMEOUT:-120}"
for t in curl python3 ss timeout; do command -v "$t" >/dev/null || die "$t is missing"; done

MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ -z "${LLAMA_IMAGE:-}" ]]; then
  if [[ -z "${LLAMA_SERVER:-}" || -z "${LLAMA_MODEL:-}" ]]; then
    # Idempotent; on a warm cache it only links build/bin/llama-server and build/models/.
    "${REPO_ROOT}/hack/llama-server.sh" >/dev/null
  fi
  server="${LLAMA_SERVER:-${BIN}/llama-server}"
  model="${LLAMA_MODEL:-${BUILD}/models/${MODEL_FILE}}"
  [[ -x "$server" ]] || die "$server is not executable"
  [[ -f "$model" ]] || die "$model is missing"
else
  [[ -f "${LLAMA_IMAGE}" ]] || die "${LLAMA_IMAGE} is missing: run IMAGES=llama-server hack/images.sh"
  ((EUID == 0)) || die "LLAMA_IMAGE needs root (chroot)"
  command -v chroot >/dev/null || die "chroot is missing"
fi

port_free() { [[ -z "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]]; }
if [[ -n "${PORT:-}" ]]; then
  port_free "$PORT" || die "port $PORT is in use"
else
  for p in $(seq 18480 18499); do port_free "$p" && { PORT="$p"; break; }; done
  [[ -n "${PORT:-}" ]] || die "no free port in 18480-18499"
fi
base="http://127.0.0.1:${PORT}"

work="$(mktemp -d "${TMPDIR:-/tmp}/llama-smoke.XXXXXX")"
if [[ -n "${LLAMA_IMAGE:-}" ]]; then
  # OCI layout: index.json -> manifest -> its single layer, a gzip tar of the rootfs.
  tar -xf "${LLAMA_IMAGE}" -C "$work" index.json blobs
  layer="$(python3 -c '
import json, sys
d = sys.argv[1]
m = json.load(open(f"{d}/index.json"))["manifests"][0]["digest"].split(":")[1]
print(json.load(open(f"{d}/blobs/sha256/{m}"))["layers"][0]["digest"].split(":")[1])' "$work")"
  mkdir -p "$work/rootfs"
  tar -xzf "$work/blobs/sha256/$layer" -C "$work/rootfs"
  rm -rf "$work/blobs"
  [[ -x "$work/rootfs/usr/local/bin/llama-server" ]] || die "the image has no /usr/local/bin/llama-server"
  [[ -f "$work/rootfs/models/${MODEL_FILE}" ]] || die "the image has no /models/${MODEL_FILE}"
  [[ -z "$(find "$work/rootfs" -name 'libc.so*' -o -name 'ld-linux*')" ]] || die "the image holds a libc; expected a static binary only"
  server_cmd=(chroot --userspec=65532:65532 "$work/rootfs" /usr/local/bin/llama-server)
  model="/models/${MODEL_FILE}"
else
  server_cmd=("$server")
fi
pid=""
cleanup() {
  local rc=$?
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    # Bounded: a server that ignores TERM for 10 s is killed.
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  if ((rc != 0)); then
    log "server log (last 30 lines):"; tail -n 30 "$work/server.log" >&2 2>/dev/null || true
  fi
  if [[ "${KEEP_LOGS:-0}" == 1 ]]; then log "kept ${work}"; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The outer timeout bounds the server's life even if this script is killed with SIGKILL and
# its trap never runs; it forwards the TERM the trap sends.
log "starting ${server_cmd[*]} on ${base} ($(basename "$model"), ${THREADS} threads)"
timeout --kill-after=10 900 "${server_cmd[@]}" -m "$model" --host 127.0.0.1 --port "$PORT" --metrics \
  -np 4 -c 8192 -t "$THREADS" > "$work/server.log" 2>&1 &
pid=$!

t0="$(date +%s.%N)"
deadline=$(( $(date +%s) + READY_TIMEOUT ))
until [[ "$(curl -s --noproxy '*' --max-time 2 -o /dev/null -w '%{http_code}' "${base}/health")" == 200 ]]; do
  kill -0 "$pid" 2>/dev/null || die "llama-server exited before it was ready"
  (( $(date +%s) < deadline )) || die "llama-server not ready on ${base}/health within ${READY_TIMEOUT}s"
  sleep 0.2
done
log "ready in $(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)")s"

# A prompt of a few hundred tokens, so the prompt rate is measured over more than a handful.
prompt="$(python3 -c 'print(" ".join(["A service mesh routes each inference request to the replica that already holds its prompt prefix in cache, which saves the prefill."] * 12) + " Summarise this in one sentence.")')"
body="$(python3 -c 'import json, sys; print(json.dumps({
  "model": "smollm2-135m",
  "messages": [{"role": "system", "content": "You are a concise assistant."},
               {"role": "user", "content": sys.argv[1]}],
  "stream": True, "stream_options": {"include_usage": True},
  "max_tokens": 128, "temperature": 0}))' "$prompt")"

# chat N: one streamed completion; the raw SSE goes to $work/sse.N, checked by check_sse.
chat() {
  curl -sS --noproxy '*' -N --max-time "${REQUEST_TIMEOUT}" -H 'Content-Type: application/json' \
    -d "$body" -o "$work/sse.$1" -w '%{http_code}' "${base}/v1/chat/completions" > "$work/code.$1" \
    || die "request $1: curl failed (timeout ${REQUEST_TIMEOUT}s?)"
  [[ "$(cat "$work/code.$1")" == 200 ]] || die "request $1: HTTP $(cat "$work/code.$1"): $(head -c 300 "$work/sse.$1")"
}

# check_sse FILE: validates the stream and prints "chunks content_chunks prompt completion
# cached prompt_tok_s predicted_tok_s" (the rates from llama.cpp's timings), or fails.
check_sse() {
  python3 - "$1" <<'EOF'
import json, sys
chunks, content, usage, timings, done = 0, 0, None, None, False
for line in open(sys.argv[1], encoding="utf-8"):
    line = line.strip()
    if not line:
        continue
    if not line.startswith("data: "):
        sys.exit(f"not an SSE data line: {line[:120]!r}")
    data = line[len("data: "):]
    if data == "[DONE]":
        done = True
        continue
    if done:
        sys.exit("data after [DONE]")
    c = json.loads(data)
    if c.get("object") != "chat.completion.chunk":
        sys.exit(f"unexpected object {c.get('object')!r}: {data[:200]}")
    chunks += 1
    for ch in c.get("choices") or []:
        if (ch.get("delta") or {}).get("content"):
            content += 1
    if c.get("usage"):
        usage = c["usage"]
        if c.get("choices"):
            sys.exit("the usage chunk must have empty choices (stream_options.include_usage)")
    if c.get("timings"):
        timings = c["timings"]
if not done:
    sys.exit("stream did not end with data: [DONE]")
if content == 0:
    sys.exit("no chunk carried delta.content")
if usage is None:
    sys.exit("no final usage chunk")
for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
    if not isinstance(usage.get(k), int) or usage[k] <= 0:
        sys.exit(f"usage.{k} missing or not positive: {usage}")
cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
if not isinstance(cached, int):
    sys.exit(f"usage.prompt_tokens_details.cached_tokens missing: {usage}")
if not timings:
    sys.exit("no timings in the stream")
print(chunks, content, usage["prompt_tokens"], usage["completion_tokens"], cached,
      f"{timings['prompt_per_second']:.1f}", f"{timings['predicted_per_second']:.1f}")
EOF
}

chat 1
read -r chunks content ptok ctok cached pps tps < <(check_sse "$work/sse.1") || die "request 1: bad stream (above)"
log "stream 1: ${chunks} chunks (${content} with content), usage prompt=${ptok} completion=${ctok} cached=${cached}"
log "stream 1: prompt ${pps} tok/s, generation ${tps} tok/s"
text="$(python3 -c '
import json, sys
out = []
for l in open(sys.argv[1], encoding="utf-8"):
    if l.startswith("data: {"):
        for ch in json.loads(l[6:]).get("choices") or []:
            out.append((ch.get("delta") or {}).get("content") or "")
print("".join(out).replace("\n", " ")[:160])' "$work/sse.1")"
log "stream 1 text: ${text}"

# The same prompt again: llama.cpp keeps the prefix in the slot's KV cache and reports it.
chat 2
read -r _ _ ptok2 _ cached2 pps2 tps2 < <(check_sse "$work/sse.2") || die "request 2: bad stream (above)"
((cached2 > 0)) || die "request 2: prompt_tokens_details.cached_tokens is 0; expected the prefix of request 1 to be cached"
log "stream 2: usage prompt=${ptok2} cached=${cached2}, prompt ${pps2} tok/s, generation ${tps2} tok/s"

curl -sS --noproxy '*' --max-time 10 -o "$work/metrics" "${base}/metrics" || die "GET /metrics failed"
names="$(grep -oE '^llamacpp:[a-z_:]+' "$work/metrics" | sort -u)"
[[ -n "$names" ]] || die "/metrics has no llamacpp:* series"
for m in llamacpp:prompt_tokens_total llamacpp:tokens_predicted_total llamacpp:requests_processing; do
  grep -qx "$m" <<<"$names" || die "/metrics lacks $m"
done
# Two completions ran, so the predicted-token counter cannot be zero.
predicted="$(awk '$1 == "llamacpp:tokens_predicted_total" {print $2}' "$work/metrics")"
python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > 0 else 1)' "${predicted:-0}" \
  || die "llamacpp:tokens_predicted_total is ${predicted:-missing} after two completions"
log "metrics: $(tr '\n' ' ' <<<"$names")"
log "ok: prompt ${pps} tok/s, generation ${tps} tok/s (${THREADS} threads, $(basename "$model"))"
