# syntax=docker/dockerfile:1
#
# One image for the Lethe API (`lethe serve`, the default command) and its Celery workers
# (`lethe worker ...`). CPU torch by default.
#
#   docker build -t lethe .                                   # CPU (python:3.11-slim)
#
# GPU workers need CUDA builds of torch. The CUDA wheels bring their own CUDA runtime
# libraries, so the slim base works once the wheel index is changed (the host needs the
# NVIDIA driver and the NVIDIA Container Toolkit; the wheel's CUDA version must suit the
# driver):
#
#   docker build -t lethe:cuda --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 .
#
# To build on an NVIDIA CUDA base image instead (e.g. for its CUDA tools), name it; a base
# without Python 3.11 gets it from the distribution (Ubuntu 22.04 ships 3.11):
#
#   docker build -t lethe:cuda \
#       --build-arg BASE_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu22.04 \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 .
#
# cu130 wheels need an NVIDIA driver for CUDA 13 (580 or newer); for an older driver pick
# the index of an older CUDA that the PyTorch install matrix lists for the pinned torch.
#
# Build arguments:
#   BASE_IMAGE           base of every stage (default python:3.11-slim)
#   TORCH_INDEX_URL      where torch and torchvision come from (default: the CPU wheel index)
#   TORCH_VERSION, TORCHVISION_VERSION   must equal the pins in pyproject.toml
#   APP_UID              numeric uid/gid of the unprivileged user the service runs as
#
# Runtime: the working directory is /var/lib/lethe (owned by the service user); the
# relative paths of the embedded defaults (var/lethe.db, var/blobs, var/admin-key.txt)
# land in /var/lib/lethe/var: mount a volume there to keep them.

ARG BASE_IMAGE=python:3.11-slim

# --- base: Python 3.11 on whatever BASE_IMAGE is ------------------------------------------
FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# python:3.11-slim has python3.11 already; CUDA bases (Ubuntu) get it from apt (unpinned:
# the distribution's 3.11 is the one wanted, whatever its patch release).
# hadolint ignore=DL3008
RUN if ! command -v python3.11 >/dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3.11 python3.11-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# --- build: a virtual environment in /opt/lethe with the project and its dependencies ------
FROM base AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
RUN python3.11 -m venv /opt/lethe
ENV PATH=/opt/lethe/bin:$PATH
# torch first, from the chosen index (CPU wheels by default: no CUDA libraries in the image).
RUN pip install --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
WORKDIR /src
# The runtime dependencies of pyproject.toml (no test extras), in their own layer so that a
# code change does not reinstall them; the torch pins are already satisfied above.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY api ./api
COPY worker ./worker
COPY unlearning_core ./unlearning_core
COPY lethe_client ./lethe_client
COPY migrations ./migrations
# Smoke test of the installed package (-I: not the sources in the working directory).
RUN pip install --no-deps . \
    && lethe --help >/dev/null \
    && python -I -c "import api.main, worker, migrations, unlearning_core"

# --- runtime: the venv, an unprivileged user, nothing else ---------------------------------
FROM base AS runtime
ARG APP_UID=10001
RUN groupadd --system --gid "${APP_UID}" lethe \
    && useradd --system --uid "${APP_UID}" --gid lethe --home-dir /var/lib/lethe \
        --no-create-home --shell /usr/sbin/nologin lethe \
    && mkdir -p /var/lib/lethe/var /var/lib/lethe/uploads /var/lib/lethe/data \
    && chown -R lethe:lethe /var/lib/lethe
COPY --from=build /opt/lethe /opt/lethe
# LETHE_SEED_DEMO=false: a production registry does not get the demo dataset and model
# unless asked for (docker-compose.yml turns it on for the quick start; set it to false there
# in .env for production). LETHE_DATA_DIR: mount real dataset files (fashion-mnist/...)
# there, read-only. LETHE_UPLOAD_DIR: uploaded manifests; every process that trains must
# see the same folder (a shared volume).
ENV PATH=/opt/lethe/bin:$PATH \
    HOME=/var/lib/lethe \
    LETHE_HOST=0.0.0.0 \
    LETHE_PORT=8000 \
    LETHE_SEED_DEMO=false \
    LETHE_DATA_DIR=/var/lib/lethe/data \
    LETHE_UPLOAD_DIR=/var/lib/lethe/uploads
WORKDIR /var/lib/lethe
USER ${APP_UID}:${APP_UID}
EXPOSE 8000
# Liveness of the API. Worker containers run no HTTP server: docker-compose.yml disables this
# check for them (with `docker run`, pass --no-healthcheck). The start period covers
# migrations and, when LETHE_SEED_DEMO=true, training the demo model on first start.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LETHE_PORT', '8000'), timeout=4)"]
CMD ["lethe", "serve", "--host", "0.0.0.0"]
