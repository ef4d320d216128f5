#!/usr/bin/env bash
# Create .venv with Python >= 3.11 and install ketang (plus extras given as $1, e.g. "test") into it.
# Installs Debian packages only when something is missing (needs root or sudo then).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  PY=python3.11; command -v python3.11 >/dev/null || need_apt+=(python3 python3-venv)
fi
"$PY" -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ "${1:-}" = "test" ]; then
  command -v redis-server >/dev/null || need_apt+=(redis-server)
  # the store's contract tests need a real PostgreSQL (tests/throwaway_postgres.py starts one when none runs on
  # 127.0.0.1:5432): Debian's package puts initdb under /usr/lib/postgresql/<version>/bin, not on PATH
  command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
  # browser tests drive Debian's chromium through Playwright (never Playwright's own download);
  # a CJK font so the Chinese interface renders in screenshots
  command -v chromium >/dev/null || need_apt+=(chromium)
  dpkg -s fonts-wqy-microhei >/dev/null 2>&1 || need_apt+=(fonts-wqy-microhei)
  # the TURN-over-TCP test starts a throwaway coturn (the server itself needs no TURN)
  command -v turnserver >/dev/null || need_apt+=(coturn)
  # the reverse-proxy test runs a throwaway nginx (TLS in front of ketang, docs/deploy.md)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
  # the browser code is type-checked by the TypeScript that package.json pins (npm ci below)
  command -v node >/dev/null || need_apt+=(nodejs)
  command -v npm >/dev/null || need_apt+=(npm)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "installing Debian packages: ${need_apt[*]}"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
# the dashboard test (tests/scenario/test_prometheus.py) runs Debian's Prometheus with its own config, data dir and
# port. The package enables and starts prometheus.service (port 9090, /var/lib/prometheus) and recommends a node
# exporter (another service): installed without it, and the service disabled, so a machine that did not ask for
# monitoring does not keep any
if [ "${1:-}" = "test" ] && ! command -v prometheus >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "installing Debian packages: prometheus"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now prometheus.service || true
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>/dev/null || true
if [ -n "${1:-}" ]; then spec=".[$1]"; else spec="."; fi
.venv/bin/python -m pip install -q -e "$spec"
if [ "${1:-}" = "test" ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
