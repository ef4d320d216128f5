#!/usr/bin/env bash
# Install what the tests need and run the whole suite. Extra arguments go to pytest
# (e.g. -m "not slow" to skip the scenario tests locally).
# Redis: KETANG_TEST_REDIS_URL if set, else 127.0.0.1:6379 if it answers, else the tests start a throwaway
# redis-server on a free port (installed from Debian when missing). Test keys live under a unique prefix.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test
exec .venv/bin/python -m pytest "$@"
