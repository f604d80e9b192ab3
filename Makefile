# The project's verbs. `make test` is the one test command (CI runs exactly it); `make demo`
# shows the system working. Both set up what they need themselves.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

KUBECONFIG_PATH := $(CURDIR)/build/cluster/kubeconfig
export PATH := $(CURDIR)/build/bin:/usr/local/go/bin:$(HOME)/.cargo/bin:$(PATH)

.PHONY: help deps demo demo-llm llama-server test unit lint e2e cluster-up cluster-down cluster-status kubeconfig \
	manifests bench bench-hardening bench-pools bench-inference images verify-down kind-e2e kubectl-plugin

help:
	@echo "make demo          local cluster, infermesh installed, a 90/10 canary split measured, then 50/50"
	@echo "make demo-llm      the same with a real LLM (llama.cpp llama-server, SmolLM2-135M) and an OpenAI client"
	@echo "make test          everything CI runs: lint, unit tests, cluster, images, e2e, teardown check"
	@echo "make e2e           e2e tests against the cluster in KUBECONFIG (default: the local one)"
	@echo "make kind-e2e      the e2e suite on a kind cluster (skipped without kind and Docker)"
	@echo "make cluster-up    start the local Kubernetes cluster (prints the kubeconfig path)"
	@echo "make cluster-down  stop it and remove everything it made"
	@echo "make kubeconfig    print the kubeconfig path: export KUBECONFIG=\$$(make -s kubeconfig)"
	@echo "make images        build the project's images and import them into the local cluster"
	@echo "make llama-server  build llama-server and fetch SmolLM2 (cached in ~/.cache/infermesh)"
	@echo "make kubectl-plugin  build kubectl-infermesh into build/bin (kubectl infermesh stat|top|check)"
	@echo "make manifests     regenerate deploy/crds from the Rust types"
	@echo "make bench         run the benchmarks (hack/bench.sh)"
	@echo "make bench-hardening  memory and CPU under hostile clients (bench/hardening.py)"
	@echo "make bench-pools   a pool of simulators (fast, slow, small KV) and llama-servers: TTFT cold and cached"
	@echo "make bench-inference  4 simulators behind sidecars: balancing policies side by side, shared prefixes and not"

deps:
	@hack/install-deps.sh

lint: deps
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	cargo test -p infermesh-sidecar --test layout --locked
	cargo machete
	hack/check-dashboard.sh

unit:
	env -u KUBECONFIG cargo test --workspace --locked

cluster-up: deps
	@hack/cluster/up

cluster-down:
	@hack/cluster/down

cluster-status:
	@hack/cluster/status

kubeconfig:
	@echo $(KUBECONFIG_PATH)

images: deps
	@hack/images.sh

# e2e tests run one at a time: they share one small node.
e2e:
	KUBECONFIG=$${KUBECONFIG:-$(KUBECONFIG_PATH)} cargo test -p infermesh-e2e --locked --no-fail-fast -- --test-threads=1

verify-down:
	@hack/cluster/verify-down

# The whole suite; the cluster is taken down at the end whether the tests passed or not, then
# checked to have left nothing behind.
test: deps lint unit
	@rc=0; \
	{ hack/llama-server.sh && hack/cluster/up && hack/images.sh && KUBECONFIG=$(KUBECONFIG_PATH) $(MAKE) --no-print-directory e2e; } || rc=$$?; \
	hack/cluster/down || rc=1; \
	hack/cluster/verify-down || rc=1; \
	if [[ $$rc -ne 0 ]]; then echo "make test: FAILED"; exit $$rc; fi; \
	echo "make test: all passed"

demo: deps
	@hack/demo.sh

demo-llm: deps
	@hack/demo-llm.sh

llama-server:
	@hack/llama-server.sh

# `kubectl infermesh` (stat, top, check): kubectl runs any kubectl-<name> on its PATH, and
# build/bin comes first on the PATH of every target here.
kubectl-plugin:
	cargo build --release --locked -p kubectl-infermesh
	mkdir -p build/bin
	install -m 0755 $${CARGO_TARGET_DIR:-target}/release/kubectl-infermesh build/bin/kubectl-infermesh

# The same e2e suite on kind where kind and Docker work; otherwise a skip message and exit 0.
kind-e2e:
	@hack/kind-e2e.sh

manifests:
	@if cargo metadata --no-deps --format-version 1 | grep -q '"name":"crdgen"'; then \
		cargo run -q -p infermesh-crds --bin crdgen; \
	else \
		echo "manifests: the crds crate has no crdgen binary yet; nothing to do"; \
	fi

bench:
	@if [[ -x hack/bench.sh ]]; then hack/bench.sh; \
	else echo "bench: hack/bench.sh does not exist yet: no benchmarks to run" >&2; exit 1; fi

# What hostile or bursty clients cost a sidecar: replay-buffer memory, idle RSS after 2,000
# connections, CPU of stalled HTTP/2 prefaces (bench/hardening.py).
bench-hardening:
	cargo build --release --locked --target x86_64-unknown-linux-musl -p infermesh-sidecar
	python3 bench/hardening.py

# The model pools the balancing benchmarks build on (bench/pools.py), started and probed once.
bench-pools: deps
	cargo build --release --locked -p infermesh-model-server
	hack/llama-server.sh
	python3 bench/pools.py --sim fast --sim slow:--step-base-us=40000 --sim small-kv:--kv-blocks=300 --llama 2

bench-inference:
	cargo build --release --locked -p infermesh-sidecar -p infermesh-model-server
	mkdir -p build/bench
	python3 bench/inference.py --json build/bench/inference-$$(date +%Y%m%d-%H%M%S).json $(ARGS)
