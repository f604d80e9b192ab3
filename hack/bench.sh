#!/usr/bin/env bash
# `make bench`: installs the peers and load generators, builds the sidecar and the benchmark
# fixtures in release mode, then runs bench/run.py (figures on stdout, JSON under build/bench/).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
hack/install-bench-deps.sh
cargo build --release --locked -p infermesh-sidecar -p infermesh-bench
exec python3 bench/run.py "$@"
