#!/usr/bin/env bash
# `make bench`: installs the peers and load generators, builds the sidecar as its image ships it
# (static musl release binary) and the benchmark fixtures (release, host target), then runs
# bench/run.py (figures on stdout, JSON under build/bench/).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
hack/install-bench-deps.sh
cargo build --release --locked --target x86_64-unknown-linux-musl -p infermesh-sidecar
cargo build --release --locked -p infermesh-bench
exec python3 bench/run.py "$@"
