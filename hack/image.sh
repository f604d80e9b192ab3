#!/usr/bin/env bash
# Makes an OCI image-layout tar without Docker: `hack/image.sh [--add SRC:/DEST]... NAME:TAG OUT.tar BIN...`.
# One gzip layer holds the binaries under /usr/local/bin, an /etc/passwd with the nonroot user
# 65532 and a /tmp; the entrypoint is the first binary. Each --add puts the file SRC at the
# absolute path DEST, world-readable (data an image serves, such as a model file). index.json carries the
# io.containerd.image.name annotation (docker.io/NAME:TAG), which `ctr images import` names the
# image by. Output is reproducible: fixed mtimes, owners and order.
set -euo pipefail

usage() { echo "usage: $0 [--add SRC:/DEST]... NAME:TAG OUT.tar BIN..." >&2; exit 2; }
adds=()
while [[ "${1:-}" == --add ]]; do
  (($# >= 2)) || usage
  [[ "$2" == *:/* ]] || usage
  [[ -f "${2%%:/*}" ]] || { echo "image.sh: ${2%%:/*} is not a file" >&2; exit 1; }
  adds+=("$2"); shift 2
done
(($# >= 3)) || usage
ref="$1"; out="$2"; shift 2
[[ "$ref" == *:* ]] || usage
for b in "$@"; do [[ -f "$b" && -x "$b" ]] || { echo "image.sh: $b is not an executable file" >&2; exit 1; }; done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"; lay="$work/layout"
mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp" "$lay/blobs/sha256"
chmod 1777 "$root/tmp"
for b in "$@"; do install -m 0755 "$b" "$root/usr/local/bin/$(basename "$b")"; done
# install -D makes the parent directories (0755); a symlinked SRC is copied as its target.
for a in "${adds[@]}"; do install -D -m 0644 "${a%%:/*}" "$root/${a#*:/}"; done
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
entry="/usr/local/bin/$(basename "$1")"

blob() { # FILE MEDIATYPE -> prints a descriptor JSON and stores the blob
  local d s
  d="$(sha256sum "$1" | cut -d' ' -f1)"; s="$(stat -c %s "$1")"
  cp "$1" "$lay/blobs/sha256/$d"
  printf '{"mediaType":"%s","digest":"sha256:%s","size":%s}' "$2" "$d" "$s"
}

tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$work/layer.tar" .
diff_id="$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"
gzip -n -6 "$work/layer.tar"
layer="$(blob "$work/layer.tar.gz" application/vnd.oci.image.layer.v1.tar+gzip)"

printf '{"architecture":"amd64","os":"linux","config":{"User":"65532:65532","Env":["PATH=/usr/local/bin:/usr/bin:/bin"],"Entrypoint":["%s"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"hack/image.sh"}]}' \
  "$entry" "$diff_id" > "$work/config.json"
config="$(blob "$work/config.json" application/vnd.oci.image.config.v1+json)"

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":%s,"layers":[%s]}' \
  "$config" "$layer" > "$work/manifest.json"
manifest="$(blob "$work/manifest.json" application/vnd.oci.image.manifest.v1+json)"

name="$ref"
[[ "${ref%%/*}" == *.* || "${ref%%/*}" == *:* ]] || name="docker.io/$ref"
printf '{"schemaVersion":2,"manifests":[%s]}\n' \
  "${manifest%\}},\"annotations\":{\"io.containerd.image.name\":\"$name\",\"org.opencontainers.image.ref.name\":\"${ref##*:}\"}}" \
  > "$lay/index.json"
printf '{"imageLayoutVersion":"1.0.0"}\n' > "$lay/oci-layout"

mkdir -p "$(dirname "$out")"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$lay" -cf "$out.tmp" oci-layout index.json blobs
mv -f "$out.tmp" "$out"
echo "$out"
