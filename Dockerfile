# sketch-reid retrieval service (CPU). Two targets (docs/service.md, "Containers"); name one:
#   serve: the service with ONNX Runtime and the bundle's prepared ONNX files, no PyTorch;
#   full:  the same plus PyTorch, for training, evaluation and `sketchreid model prepare`
#          (the last stage, so a build without --target makes it).
#
#   docker build --network host --target serve -t sketch-reid:serve .
#   docker build --network host --target full -t sketch-reid:full .
# A docker client without the buildx plugin ("BuildKit is enabled but the buildx component is
# missing"): put DOCKER_BUILDKIT=0 in front; nothing here needs BuildKit. No image registry
# reachable: make the base from Debian's archive and add --build-arg BASE_IMAGE=debian-local:bookworm
# (docs/service.md). Behind a TLS-intercepting proxy: copy its CA certificate(s) into
# docker/ca/*.crt first; they are trusted by the build stages only, never by the images.
# The image holds the code, the migrations and model_store/default with its prepared ONNX files
# (`sketchreid model prepare`); the data folder /data is a volume.
# Debian 12 (bookworm): Python is its 3.11, pinned; ca-certificates is not (a point release
# replaces it, and a pin to the old version then fails the build).
ARG BASE_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------- build: the serving venv
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3=3.11.2-1+b1 python3-venv=3.11.2-1+b1 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
COPY docker/ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install .

# ---------------------------------------------------------------- build-serve: trimmed
FROM build AS build-serve
# The serving image installs nothing at run time: no pip. Bytecode: only what a start imports.
# The server is started once here (docker/warm_start.py: migrations on a new SQLite database, the
# bundle's prepared ONNX files, until /readyz answers), so a serving image that cannot start
# fails to build, and the .pyc files that start compiled are kept (~24 MB, pinned as
# unchecked-hash files): the image runs with PYTHONDONTWRITEBYTECODE, and compiling them at every
# start cost ~6 s of a 14 s start (docs/service.md, "Containers"); bytecode for the whole
# virtualenv would add ~66 MB.
RUN find /opt/venv -name "__pycache__" -prune -exec rm -rf {} + \
    && rm -rf /opt/venv/lib/python3.11/site-packages/pip* /opt/venv/bin/pip*
WORKDIR /warm
COPY migrations ./migrations
COPY model_store/default ./model_store/default
COPY docker/warm_start.py ./
RUN SKETCHREID_MODEL_DIR=/warm/model_store/default OMP_NUM_THREADS=1 python warm_start.py \
    && rm -rf /warm

# ---------------------------------------------------------------- runtime base
FROM ${BASE_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    SKETCHREID_DATA_DIR=/data \
    SKETCHREID_MODEL_DIR=/app/model_store/default
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3=3.11.2-1+b1 \
    && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* \
    && groupadd --gid 10001 sketchreid \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin sketchreid \
    && mkdir -p /data \
    && chown 10001:10001 /data
WORKDIR /app
COPY migrations ./migrations
EXPOSE 8000
VOLUME ["/data"]
# SKETCHREID_HOST / SKETCHREID_PORT (default 0.0.0.0:8000): where the server listens, e.g.
# 127.0.0.1 and a free port with `docker run --network host`.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SKETCHREID_PORT', '8000'), timeout=4)"]
# Migrations first (idempotent), then the server, in one process (`serve --migrate`: one
# interpreter start, not two; one server process: the index lives in memory).
CMD ["sh", "-c", "exec sketchreid serve --migrate --host \"${SKETCHREID_HOST:-0.0.0.0}\" --port \"${SKETCHREID_PORT:-8000}\""]

# ---------------------------------------------------------------- serve: no PyTorch
FROM runtime AS serve
COPY --from=build-serve /opt/venv /opt/venv
# Last, so that a new model does not re-install the dependencies. Only the served bundle.
COPY model_store/default ./model_store/default
USER 10001:10001

# ---------------------------------------------------------------- build-full: + PyTorch
FROM build AS build-full
# CPU-only PyTorch by default. Where download.pytorch.org is out of reach, PyPI's wheels (a
# CUDA build, ~5.5 GB with its libraries, that runs on the CPU):
#   --build-arg TORCH_INDEX_URL=https://pypi.org/simple
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch>=2.14,<2.15" "torchvision>=0.29,<0.30" \
    && pip install ".[train]"

# ---------------------------------------------------------------- full: with PyTorch
FROM runtime AS full
COPY --from=build-full /opt/venv /opt/venv
COPY model_store ./model_store
USER 10001:10001
