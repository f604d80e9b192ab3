#!/usr/bin/env bash
# Builds the Kubernetes components (one Go binary, see k8s/main.go) into the version-keyed
# cache, unless the cache already holds this version built from this source.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SRC="${REPO_ROOT}/hack/cluster/k8s"
stamp_want="$(cat "${SRC}/go.mod" "${SRC}/go.sum" "${SRC}/main.go" | sha256sum | cut -c1-16)"
if [[ -x "${K8S_CACHE}/k8s" && "$(cat "${K8S_CACHE}/stamp" 2>/dev/null)" == "${stamp_want}" ]]; then
  exit 0
fi
command -v go >/dev/null || die "go is missing: run hack/install-deps.sh"
mkdir -p "${K8S_CACHE}"
log "building Kubernetes ${K8S_VERSION} components into ${K8S_CACHE} (cold: about 5-6 minutes)"
v="k8s.io/component-base/version"
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
ldflags="-s -w -X ${v}.gitVersion=${K8S_VERSION} -X ${v}.gitMajor=1 -X ${v}.gitMinor=${minor}"
ldflags+=" -X ${v}.gitTreeState=clean -X ${v}.buildDate=1970-01-01T00:00:00Z"
ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=${K8S_VERSION}"
(cd "${SRC}" && CGO_ENABLED=0 go build -trimpath -ldflags "${ldflags}" -o "${K8S_CACHE}/k8s.new" .) \
  || die "Kubernetes build failed (see the go output above)"
mv -f "${K8S_CACHE}/k8s.new" "${K8S_CACHE}/k8s"
for c in kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubectl; do
  ln -sfn k8s "${K8S_CACHE}/${c}"
done
echo "${stamp_want}" > "${K8S_CACHE}/stamp"
log "built $(du -h "${K8S_CACHE}/k8s" | cut -f1) ${K8S_CACHE}/k8s"
