#!/usr/bin/env bash
# Type-checks deploy/observability/grafana-dashboard.json against Grafana's own dashboard schema
# (the Dashboard type of @grafana/schema, which Grafana generates from its CUE kinds): the JSON
# becomes an object literal of that type, so an unknown field, a field of the wrong type or a
# missing required one fails with tsc's message. The two npm packages (pinned in
# hack/dashboard/package-lock.json) are installed once into ~/.cache/infermesh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dashboard=deploy/observability/grafana-dashboard.json
command -v npm >/dev/null || { echo "check-dashboard: npm is needed (Node.js 18 or later)" >&2; exit 1; }
lock_sum=$(sha256sum hack/dashboard/package-lock.json | cut -c1-16)
dir="${XDG_CACHE_HOME:-$HOME/.cache}/infermesh/dashboard-check/${lock_sum}"
if [[ ! -f "${dir}/installed" ]]; then
  # Installed beside, then moved in whole: an interrupted install leaves nothing that looks done.
  tmp="${dir}.tmp.$$"
  rm -rf "${tmp}" && mkdir -p "${tmp}"
  cp hack/dashboard/package.json hack/dashboard/package-lock.json "${tmp}/"
  (cd "${tmp}" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  touch "${tmp}/installed"
  rm -rf "${dir}" && mv "${tmp}" "${dir}"
fi
{
  echo 'import type { Dashboard } from "@grafana/schema/dist/types/raw/dashboard/x/types.gen";'
  printf 'export const dashboard: Dashboard = '
  cat "${dashboard}"
  echo ';'
} > "${dir}/dashboard.ts"
if ! (cd "${dir}" && node_modules/.bin/tsc --noEmit --strict --moduleResolution node --target es2020 dashboard.ts); then
  echo "check-dashboard: ${dashboard} does not fit Grafana's dashboard schema (lines above are of ${dir}/dashboard.ts, the JSON from its line 2)" >&2
  exit 1
fi
echo "check-dashboard: ${dashboard} fits Grafana's dashboard schema (@grafana/schema $(node -p "require('${dir}/node_modules/@grafana/schema/package.json').version"))"
