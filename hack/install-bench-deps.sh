#!/usr/bin/env bash
# Installs the peers and load generators `make bench` compares against (idempotent, quick when present):
# wrk, HAProxy, nginx, h2load from Debian; oha from crates.io; and the musl toolchain the sidecar's
# image binary is built with.
set -euo pipefail
missing=()
for pair in wrk:wrk haproxy:haproxy nginx:nginx-light h2load:nghttp2-client taskset:util-linux python3:python3 musl-gcc:musl-tools; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
  echo "installing ${missing[*]} (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
  echo "adding Rust target x86_64-unknown-linux-musl"
  rustup target add x86_64-unknown-linux-musl
fi
OHA_VERSION=1.16.0
if ! command -v oha >/dev/null 2>&1 || [[ "$(oha --version 2>/dev/null)" != *"$OHA_VERSION"* ]]; then
  echo "installing oha $OHA_VERSION (cargo)"
  cargo install oha --version "$OHA_VERSION" --locked --quiet
fi
