# sketch-reid retrieval service (CPU). Build: docker build -t sketch-reid .
# The image holds the code, the migrations and the model bundle in model_store/ (build it
# first: docs/reproduce.md); the data folder /data is a volume (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SKETCHREID_DATA_DIR=/data \
    SKETCHREID_MODEL_DIR=/app/model_store/default

WORKDIR /app

# CPU-only PyTorch from the PyTorch package index first, so that installing the project
# finds torch already satisfied and does not pull the CUDA wheels (several GB).
RUN pip install --index-url https://download.pytorch.org/whl/cpu \
        "torch>=2.14,<2.15" "torchvision>=0.29,<0.30"

COPY pyproject.toml README.md ./
COPY app ./app
COPY migrations ./migrations
RUN pip install ".[onnx]"
# Last, so that a new model does not re-install the dependencies.
COPY model_store ./model_store

RUN groupadd --gid 10001 sketchreid \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin sketchreid \
    && mkdir -p /data \
    && chown 10001:10001 /data
USER 10001:10001

EXPOSE 8000
VOLUME ["/data"]

HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# Migrations first (idempotent), then the server (one process: the index lives in memory).
CMD ["sh", "-c", "sketchreid db upgrade && exec sketchreid serve --host 0.0.0.0 --port 8000"]
