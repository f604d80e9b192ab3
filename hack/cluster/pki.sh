#!/usr/bin/env bash
# Generates the cluster's CA, component certificates, service-account key pair and the
# kubeconfigs, under build/cluster/pki. Existing files are kept (a restart keeps identities);
# delete build/cluster/pki to start over.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

mkdir -p "${PKI}"
cd "${PKI}"
DAYS=3650

if [[ ! -f ca.crt ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key \
    -out ca.crt -days "${DAYS}" -subj "/CN=infermesh-local-ca" 2>/dev/null
fi

# cert NAME CN [O] [SAN]: a client (or, with SAN, server) certificate signed by the CA.
cert() {
  local name="$1" cn="$2" org="${3:-}" san="${4:-}" subj="/CN=$2" ext
  [[ -f "${name}.crt" ]] && return 0
  [[ -n "$org" ]] && subj="/O=${org}/CN=${cn}"
  ext="$(mktemp)"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [[ -n "$san" ]]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=${san}"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } > "$ext"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "${name}.key" \
    -out "${name}.csr" -subj "${subj}" 2>/dev/null
  openssl x509 -req -in "${name}.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "${DAYS}" \
    -extfile "$ext" -out "${name}.crt" 2>/dev/null
  rm -f "${name}.csr" "$ext"
}

api_san="DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
api_san+=",DNS:kubernetes.default.svc.${CLUSTER_DOMAIN},DNS:localhost,DNS:${NODE_NAME}"
api_san+=",IP:${NODE_IP},IP:${API_SERVICE_IP},IP:127.0.0.1"
cert apiserver kube-apiserver "" "${api_san}"
cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
cert admin kubernetes-admin system:masters
cert controller-manager system:kube-controller-manager
cert scheduler system:kube-scheduler
cert kubelet "system:node:${NODE_NAME}" system:nodes
cert kubelet-serving "system:node:${NODE_NAME}" system:nodes "DNS:${NODE_NAME},IP:${NODE_IP}"
cert kube-proxy system:kube-proxy
cert coredns system:coredns

if [[ ! -f sa.key ]]; then
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
fi
chmod 600 ./*.key

# kubeconfig FILE USER: a kubeconfig for the API at the node IP with USER's certificate.
kubeconfig() {
  local file="$1" user="$2"
  cat > "${file}" <<KC
apiVersion: v1
kind: Config
clusters:
- name: infermesh
  cluster:
    server: https://${NODE_IP}:6443
    certificate-authority-data: $(base64 -w0 ca.crt)
users:
- name: ${user}
  user:
    client-certificate-data: $(base64 -w0 "${user}.crt")
    client-key-data: $(base64 -w0 "${user}.key")
contexts:
- name: infermesh
  context:
    cluster: infermesh
    user: ${user}
current-context: infermesh
KC
  chmod 600 "${file}"
}
for u in controller-manager scheduler kubelet kube-proxy coredns; do
  kubeconfig "${PKI}/${u}.kubeconfig" "$u"
done
kubeconfig "${KUBECONFIG_PATH}" admin
