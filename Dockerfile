# sketch-reid retrieval service (CPU).
#   DOCKER_BUILDKIT=1 docker build -t sketch-reid .
# Without a reachable image registry, make the base from Debian's archive and name it:
#   DOCKER_BUILDKIT=1 docker build --network host --build-arg BASE_IMAGE=debian-local:bookworm \
#       --secret id=pipcert,src=/etc/ssl/certs/ca-certificates.crt -t sketch-reid .
# (docs/reliability.md: the whole procedure, as run.) The pipcert secret is the CA bundle of a
# TLS-intercepting proxy for pip; it is mounted for the pip steps only, never stored in a layer.
# The image holds the code, the migrations and the model bundle in model_store/ (build it
# first: docs/reproduce.md); the data folder /data is a volume (see docker-compose.yml).
# Debian 12 (bookworm): the apt pins below are its versions; Python is its 3.11.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
# CPU-only PyTorch by default. Where download.pytorch.org is out of reach, PyPI's wheels (a
# CUDA build, ~5.5 GB with its libraries, that runs on the CPU): TORCH_INDEX_URL=https://pypi.org/simple
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3=3.11.2-1+b1 python3-venv=3.11.2-1+b1 ca-certificates=20230311+deb12u1 \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
WORKDIR /src
# Torch first, from its index, so that installing the project finds it already satisfied.
RUN --mount=type=secret,id=pipcert \
    if [ -s /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi \
    && pip install --index-url "${TORCH_INDEX_URL}" "torch>=2.14,<2.15" "torchvision>=0.29,<0.30"
COPY pyproject.toml README.md ./
COPY app ./app
RUN --mount=type=secret,id=pipcert \
    if [ -s /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi \
    && pip install ".[onnx]"

FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    SKETCHREID_DATA_DIR=/data \
    SKETCHREID_MODEL_DIR=/app/model_store/default
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3=3.11.2-1+b1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 sketchreid \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin sketchreid \
    && mkdir -p /data \
    && chown 10001:10001 /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY migrations ./migrations
# Last, so that a new model does not re-install the dependencies.
COPY model_store ./model_store
USER 10001:10001

EXPOSE 8000
VOLUME ["/data"]

# SKETCHREID_HOST / SKETCHREID_PORT (default 0.0.0.0:8000): where the server listens, e.g.
# 127.0.0.1 and a free port with `docker run --network host`.
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SKETCHREID_PORT', '8000'), timeout=4)"]

# Migrations first (idempotent), then the server (one process: the index lives in memory).
CMD ["sh", "-c", "sketchreid db upgrade && exec sketchreid serve --host \"${SKETCHREID_HOST:-0.0.0.0}\" --port \"${SKETCHREID_PORT:-8000}\""]
