#!/usr/bin/env bash
# Install and run the server with embedded defaults (in-process room state, no Redis needed).
# Extra arguments go to `ketang serve` (e.g. --host 0.0.0.0 --port 443 --tls-cert fullchain.pem --tls-key
# privkey.pem: teachers' browsers open the camera only over https, docs/deploy.md; --redis-url redis://...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/ketang serve "$@"
