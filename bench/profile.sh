#!/usr/bin/env bash
# Instructions per request of the sidecar's hot path, next to the backend's own (the `direct`
# baseline), counted by callgrind: repeatable on a busy machine, unlike wall-clock figures.
#
#   bench/profile.sh [requests]        (default 20000; needs valgrind and oha; NO_BUILD=1 reuses
#                                      the last build, CARGO_FEATURES=x adds sidecar features)
#
# Builds with debug line tables (no LTO, for build speed: compare figures of this script only, not
# with the release build's), starts two benchmark backends and the sidecar with the bench's
# ModelService (stable 90 / canary 10, retries on), warms up, then counts only the measured requests
# (callgrind instrumentation switched on after the warm-up). Leaves the profiles in build/profile/ for
# `callgrind_annotate --inclusive=yes build/profile/sidecar.out`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N=${1:-20000}
# Below the ephemeral range (32768-60999), where a busy machine's client sockets would collide.
BASE=${BENCH_BASE_PORT:-24080}
STABLE=$((BASE + 1)) CANARY=$((BASE + 2)) SIDECAR=$((BASE + 10))
OUT=build/profile
TARGET=${PROFILE_TARGET_DIR:-build/target-prof}
mkdir -p "$OUT"

if [[ -z ${NO_BUILD:-} ]]; then
	features=()
	[[ -n ${CARGO_FEATURES:-} ]] && features=(--features "infermesh-sidecar/$CARGO_FEATURES")
	CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
		CARGO_PROFILE_RELEASE_DEBUG=line-tables-only CARGO_PROFILE_RELEASE_STRIP=false \
		CARGO_TARGET_DIR=$TARGET cargo build --release -q -p infermesh-sidecar -p infermesh-bench \
		"${features[@]}"
fi
BIN=$TARGET/release

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

for port in "$STABLE" "$CANARY" "$SIDECAR"; do
	if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
		echo "profile: port $port is busy; set BENCH_BASE_PORT" >&2
		exit 1
	fi
done

wait_port() {
	for _ in $(seq 600); do
		(exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0
		sleep 0.1
	done
	echo "profile: nothing listens on $1" >&2
	exit 1
}

cat >"$OUT/mesh.json" <<EOF
{"revision":"profile","services":[{"name":"bench","namespace":"default","port":$STABLE,
 "variants":[{"name":"stable","weight":90,"endpoints":[{"address":"127.0.0.1:$STABLE"}]},
             {"name":"canary","weight":10,"endpoints":[{"address":"127.0.0.1:$CANARY"}]}],
 "retries":{"attempts":3,"retryOn":["connect-failure","5xx"],"backoffBaseMs":25,"backoffMaxMs":1000,
            "backoffJitter":0.5,"budgetRatio":0.2,"budgetMinPerSecond":10}}]}
EOF

# Counts one process's instructions over N requests sent to `port` (after a warm-up).
# $1 name, $2 port, rest: the command to run under callgrind.
count() {
	local name=$1 port=$2
	shift 2
	valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/$name.out" \
		"$@" >"$OUT/$name.log" 2>&1 &
	local pid=$!
	pids+=("$pid")
	wait_port "$port"
	oha --no-tui -n 2000 -c 4 -H "Host: bench" "http://127.0.0.1:$port/" >/dev/null
	callgrind_control -i on "$pid" >/dev/null
	oha --no-tui --output-format json -n "$N" -c 4 -H "Host: bench" "http://127.0.0.1:$port/" >"$OUT/$name.oha.json"
	callgrind_control -i off "$pid" >/dev/null
	kill -INT "$pid"
	wait "$pid" || true
	local ok ir
	ok=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(sum(d["statusCodeDistribution"].get(k,0) for k in ("200",)))' "$OUT/$name.oha.json")
	ir=$(callgrind_annotate "$OUT/$name.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
	printf '%-8s %12s Ir  %6s ok of %s  %8d Ir/request\n' "$name" "$ir" "$ok" "$N" $((ir / (ok > 0 ? ok : 1)))
}

# The backends run plainly for the sidecar; then one runs under callgrind as the direct baseline.
"$BIN/infermesh-bench" backend --addr "127.0.0.1:$STABLE" --version v1 >/dev/null 2>&1 &
pids+=($!)
"$BIN/infermesh-bench" backend --addr "127.0.0.1:$CANARY" --version v2 >/dev/null 2>&1 &
pids+=($!)
wait_port "$STABLE"
wait_port "$CANARY"
RUST_LOG=warn count sidecar "$SIDECAR" "$BIN/infermesh-sidecar" --config-file "$OUT/mesh.json" \
	--inbound "127.0.0.1:$SIDECAR" --outbound "127.0.0.1:$((BASE + 13))" \
	--admin "127.0.0.1:$((BASE + 14))" --workers 1
kill "${pids[0]}"
wait "${pids[0]}" 2>/dev/null || true
count direct "$STABLE" "$BIN/infermesh-bench" backend --addr "127.0.0.1:$STABLE" --version v1
