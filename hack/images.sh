#!/usr/bin/env bash
# Builds the project's images without Docker: static musl release binaries of the workspace,
# one OCI archive per image under build/images/, imported into the local cluster's containerd
# (namespace k8s.io) when it is up. Images whose binaries do not exist yet are skipped.
# IMAGES="examples pause" limits the set. CONTAINERD_ADDRESS (as ctr reads it) picks another
# cluster's containerd socket, e.g. the shared one from /work/cluster.env.
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
want=(${IMAGES:-${ORDER[*]}})

# Binaries the workspace defines (a bin target of a member package) -> package.
declare -A BIN_PKG=()
while read -r bin pkg; do BIN_PKG[$bin]=$pkg; done < <(
  cd "${REPO_ROOT}" && cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys
for p in json.load(sys.stdin)["packages"]:
    for t in p["targets"]:
        if "bin" in t["kind"]:
            print(t["name"], p["name"])')

pkgs=(); build=()
for img in "${want[@]}"; do
  [[ -v "IMAGE_BINS[$img]" ]] || die "unknown image '$img' (known: ${ORDER[*]})"
  [[ "$img" == pause ]] && continue
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

sock="${CONTAINERD_ADDRESS:-${CONTAINERD_SOCK}}"
up=0
[[ -S "$sock" ]] && ctr -a "$sock" version >/dev/null 2>&1 && up=1
for img in "${tars[@]}"; do
  size="$(du -h --apparent-size "${OUT}/${img}.tar" | cut -f1)"
  if ((up)); then
    ctr -n k8s.io -a "$sock" images import "${OUT}/${img}.tar" >/dev/null \
      || die "importing ${OUT}/${img}.tar failed: see ${LOGS}/containerd.log"
    printf 'infermesh/%-10s 0.1.0  %6s  %s  (imported)\n' "$img" "$size" "${OUT}/${img}.tar"
  else
    printf 'infermesh/%-10s 0.1.0  %6s  %s  (cluster down: not imported)\n' "$img" "$size" "${OUT}/${img}.tar"
  fi
done
