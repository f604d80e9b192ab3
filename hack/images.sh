#!/usr/bin/env bash
# Builds the project's images without Docker: static musl release binaries of the workspace,
# one OCI archive per image under build/images/, imported into the local cluster's containerd
# (namespace k8s.io) when it is up. Images whose binaries do not exist yet are skipped.
# IMAGES="examples pause" limits the set. CONTAINERD_ADDRESS (as ctr reads it) picks another
# cluster's containerd socket, e.g. the shared one from /work/cluster.env.
# infermesh/llama-server (llama.cpp's server and the SmolLM2-135M GGUF, from hack/llama-server.sh)
# is not a workspace binary and takes minutes to build cold: it is made when IMAGES names it, or
# in the default set when build/bin/llama-server already exists. A set without workspace images
# (IMAGES="llama-server", IMAGES=pause) does not run cargo at all.
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/cluster/lib.sh"
TARGET=x86_64-unknown-linux-musl
OUT="${BUILD}/images"
mkdir -p "${OUT}"

# image name -> binaries (the first is the entrypoint)
declare -A IMAGE_BINS=(
  [operator]="infermesh-operator"
  [webhook]="infermesh-webhook"
  [sidecar]="infermesh-sidecar"
  [examples]="infermesh-model-server infermesh-client"
  [pause]=""
)
ORDER=(operator webhook sidecar examples pause)
LLAMA_MODEL="SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ -n "${IMAGES:-}" ]]; then
  read -r -a want <<<"${IMAGES}"
else
  want=("${ORDER[@]}")
  if [[ -x "${BIN}/llama-server" ]]; then want+=(llama-server); fi
fi

# Wanted images made of workspace binaries: only these need cargo.
cargo_want=()
for img in "${want[@]}"; do
  case "$img" in
    pause|llama-server) ;;
    *) [[ -v "IMAGE_BINS[$img]" ]] || die "unknown image '$img' (known: ${ORDER[*]} llama-server)"
       cargo_want+=("$img") ;;
  esac
done

# Binaries the workspace defines (a bin target of a member package) -> package.
declare -A BIN_PKG=()
if ((${#cargo_want[@]})); then
  while read -r bin pkg; do BIN_PKG[$bin]=$pkg; done < <(
    cd "${REPO_ROOT}" && cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys
for p in json.load(sys.stdin)["packages"]:
    for t in p["targets"]:
        if "bin" in t["kind"]:
            print(t["name"], p["name"])')
fi

pkgs=(); build=()
for img in "${cargo_want[@]}"; do
  ok=1
  for b in ${IMAGE_BINS[$img]}; do [[ -v "BIN_PKG[$b]" ]] || ok=0; done
  if ((ok)); then
    build+=("$img")
    for b in ${IMAGE_BINS[$img]}; do pkgs+=(-p "${BIN_PKG[$b]}"); done
  else
    log "skipping infermesh/${img}:0.1.0: binaries '${IMAGE_BINS[$img]}' are not in the workspace yet"
  fi
done

if ((${#pkgs[@]})); then
  log "building release binaries for ${TARGET}: ${build[*]}"
  (cd "${REPO_ROOT}" && cargo build --release --locked --target "${TARGET}" "${pkgs[@]}") \
    || die "cargo build --release --target ${TARGET} failed (see above)"
fi

tars=()
for img in "${build[@]}"; do
  files=()
  for b in ${IMAGE_BINS[$img]}; do files+=("${REPO_ROOT}/target/${TARGET}/release/${b}"); done
  "${REPO_ROOT}/hack/image.sh" "infermesh/${img}:0.1.0" "${OUT}/${img}.tar" "${files[@]}" >/dev/null
  tars+=("${img}")
done
if [[ " ${want[*]} " == *" pause "* ]]; then
  gcc -static -O2 -s -o "${OUT}/infermesh-pause" "${REPO_ROOT}/hack/pause/pause.c"
  "${REPO_ROOT}/hack/image.sh" infermesh/pause:0.1.0 "${OUT}/pause.tar" "${OUT}/infermesh-pause" >/dev/null
  tars+=(pause)
fi
if [[ " ${want[*]} " == *" llama-server "* ]]; then
  # Idempotent: links the cached build and model in a second; builds them only on a cold cache.
  "${REPO_ROOT}/hack/llama-server.sh" >/dev/null
  "${REPO_ROOT}/hack/image.sh" --add "${BUILD}/models/${LLAMA_MODEL}:/models/${LLAMA_MODEL}" \
    infermesh/llama-server:0.1.0 "${OUT}/llama-server.tar" "${BIN}/llama-server" >/dev/null
  tars+=(llama-server)
fi

sock="${CONTAINERD_ADDRESS:-${CONTAINERD_SOCK}}"
up=0
[[ -S "$sock" ]] && ctr -a "$sock" version >/dev/null 2>&1 && up=1
for img in "${tars[@]}"; do
  size="$(du -h --apparent-size "${OUT}/${img}.tar" | cut -f1)"
  if ((up)); then
    ctr -n k8s.io -a "$sock" images import "${OUT}/${img}.tar" >/dev/null \
      || die "importing ${OUT}/${img}.tar failed: see ${LOGS}/containerd.log"
    printf 'infermesh/%-12s 0.1.0  %6s  %s  (imported)\n' "$img" "$size" "${OUT}/${img}.tar"
  else
    printf 'infermesh/%-12s 0.1.0  %6s  %s  (cluster down: not imported)\n' "$img" "$size" "${OUT}/${img}.tar"
  fi
done
