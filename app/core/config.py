"""Service settings: one pydantic-settings ``Settings``, read from ``SKETCHREID_*`` variables.

``ENV=production`` refuses the defaults that are only fit for a laptop: a SQLite database
(the audit trail belongs in a server database with backups) and a relative ``DATA_DIR``
(blobs and the index must not depend on the working directory).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core.net import IPNetwork, parse_networks
from app.errors import SketchReidError
from app.ml.infer.precision import ServingPrecision

IndexType = Literal["auto", "flat", "hnsw", "ivf"]
IndexBackend = Literal["faiss", "pgvector"]
InferenceBackend = Literal["torch", "onnx", "auto"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SKETCHREID_", env_file=None, extra="ignore", case_sensitive=False
    )

    ENV: Literal["development", "production"] = "development"
    DATA_DIR: Path = Path("var")
    # Empty means sqlite:///<DATA_DIR>/sketchreid.db (filled in by the validator below).
    DATABASE_URL: str = ""
    MODEL_DIR: Path = Path("model_store/default")
    MODEL_DEVICE: str = "cpu"
    # Inference precision (app.ml.infer.precision): fp32; bf16 autocast; int8 = ONNX Runtime's
    # statically quantised member graphs (app.ml.bundle.onnx_quantize; built into
    # DATA_DIR/onnx/<digest>-int8 at start when absent, the translator stays fp32; needs
    # BACKEND onnx or auto and the CPU); auto = on the CPU, the bundle's prepared int8 files
    # (`sketchreid model prepare --int8`) on a CPU with VNNI, else fp32; on a GPU, bf16 where
    # it has bf16 units. bf16 is never chosen for the CPU: it changes top-10 lists and PyTorch
    # bf16 is slower there than ONNX Runtime fp32 (docs/results.md, "Precision").
    PRECISION: ServingPrecision = "fp32"
    # What runs the networks: torch; onnx (ONNX Runtime, CPU, fp32 or int8: exported once into
    # DATA_DIR/onnx and checked against the bundle at every start); auto = onnx when
    # onnxruntime is installed, the device is the CPU and the precision fp32 (or int8), else
    # torch.
    BACKEND: InferenceBackend = "auto"
    # PRECISION=int8: the PKU-Sketch-layout folder whose photos and sketches calibrate the
    # int8 graphs (identities the model will not be judged on); empty: synthetic people from
    # the generator. At most INT8_CALIBRATION_IMAGES photos and as many sketches. Used only
    # when the int8 folder is (re)built: delete DATA_DIR/onnx/<digest>-int8 to recalibrate.
    INT8_CALIBRATION_DIR: Path | None = None
    INT8_CALIBRATION_IMAGES: int = Field(default=64, ge=1, le=100_000)

    MAX_UPLOAD_MB: float = Field(default=20.0, gt=0, le=1024)
    MAX_IMAGE_PIXELS: int = Field(default=40_000_000, gt=0)
    # Images are downscaled to this longest side right after decoding (the model sees 64x32).
    DECODE_MAX_SIDE: int = Field(default=1024, ge=64)
    # Decoded pixels in flight, all requests together (uploads, batches, searches): a decode
    # holds what its image needs at its peak (app.ml.images.decode_cost, e.g. ~176 MB for a
    # 40 Mpx RGB PNG) and waits for room, up to DECODE_WAIT_SECONDS (then 503); an image
    # needing more than the whole budget is refused (400). 640 MB: every image that
    # MAX_IMAGE_PIXELS allows fits (the most, ~570 MB: 40 Mpx RGB with a transparent colour).
    DECODE_MEMORY_MB: float = Field(default=640.0, ge=16, le=1_000_000)
    DECODE_WAIT_SECONDS: float = Field(default=30.0, ge=0, le=3600)
    MAX_BATCH_FILES: int = Field(default=100, ge=1, le=10_000)
    # Whole body of one batch request (413 beyond, refused while it streams).
    MAX_BATCH_MB: float = Field(default=200.0, gt=0, le=100_000)
    # Batch uploads processed at once; one more is refused with 429 before its body is read.
    MAX_CONCURRENT_BATCHES: int = Field(default=2, ge=1, le=1000)

    # auto: exact below INDEX_AUTO_APPROX_FROM items at start-up, HNSW from there on.
    INDEX_TYPE: IndexType = "auto"
    INDEX_AUTO_APPROX_FROM: int = Field(default=25_000, ge=1)
    INDEX_HNSW_M: int = Field(default=32, ge=4, le=256)
    INDEX_HNSW_EF_CONSTRUCTION: int = Field(default=40, ge=1)
    INDEX_HNSW_EF_SEARCH: int = Field(default=256, ge=1)
    # Filtered HNSW searches scale efSearch by sqrt(items in the index / items allowed), up to this.
    INDEX_HNSW_FILTER_EF_MAX: int = Field(default=1024, ge=1)
    INDEX_IVF_NPROBE: int = Field(default=16, ge=1)
    # Filters leaving at most this many items are searched exactly on HNSW / IVF.
    INDEX_EXACT_FILTER_MAX: int = Field(default=20_000, ge=0)
    # Where the vectors are searched: faiss (an in-memory index in each API process, rebuilt from
    # the database) or pgvector (a halfvec column with an HNSW index in PostgreSQL: the one
    # shared index of the cluster profile, so API replicas hold no index state; docs/scaling.md).
    INDEX_BACKEND: IndexBackend = "faiss"
    # pgvector: hnsw.ef_search of unfiltered searches (filtered ones scan on iteratively up to
    # PGVECTOR_MAX_SCAN_TUPLES); at most 1000. Filters leaving at most INDEX_EXACT_FILTER_MAX
    # items are searched exactly, as on FAISS.
    PGVECTOR_EF_SEARCH: int = Field(default=100, ge=1, le=1000)
    PGVECTOR_MAX_SCAN_TUPLES: int = Field(default=50_000, ge=1)
    # Cluster profile: a Celery broker (RabbitMQ: amqp://user:password@host:5672/vhost; Redis
    # works too). Set: uploads are stored and queued (202, status pending) and `sketchreid
    # worker` processes embed them. Empty: uploads are embedded in the API process (today's).
    BROKER_URL: str = ""
    # Seconds an upload waits for the broker before it is refused with 503.
    BROKER_TIMEOUT_SECONDS: float = Field(default=3.0, gt=0, le=300)
    # `sketchreid worker` queues again items left pending for longer than this (a crash between
    # the upload's commit and its message), at its start and then every this many seconds, when
    # no message waits in the queue (app.queue.requeue). 0: never.
    REQUEUE_PENDING_SECONDS: float = Field(default=300.0, ge=0)
    # Seconds between checks that the in-memory index matches the database (picks up items
    # ingested by `sketchreid ingest` while the server runs). 0 disables the check.
    INDEX_SYNC_SECONDS: float = Field(default=30.0, ge=0)

    # Files that no row references (left by a crash between writing a file and committing its
    # row) are removed once older than this (the in-flight window), at start-up and then
    # every ORPHAN_SWEEP_SECONDS (0: only at start-up).
    ORPHAN_MIN_AGE_SECONDS: float = Field(default=900.0, ge=0)
    ORPHAN_SWEEP_SECONDS: float = Field(default=3600.0, ge=0)

    # Searches (record, sketch, translated image) older than this many days are removed by
    # `sketchreid searches purge`; 0 keeps them until purged with --older-than-days.
    SEARCH_RETENTION_DAYS: int = Field(default=0, ge=0, le=100_000)

    RERANK_CANDIDATES: int = Field(default=100, ge=2, le=2000)
    # A search that does not say whether to re-rank is re-ranked when the gallery it searches
    # (after its filters) holds at least this many items; 0: never automatically. Chosen by the
    # distractor protocol (docs/results.md, "Large galleries"): re-ranking the top candidates
    # loses on ~100-photo galleries and wins once strangers fill the gallery.
    RERANK_AUTO_MIN_ITEMS: int = Field(default=1000, ge=0)
    # numpy's BLAS threads in the service (distance matrices of re-ranking and feedback): their
    # work is tiny, and extra BLAS threads spinning for a busy CPU cost more than they save
    # (docs/results.md, "Query-time re-ranking"). Models run on their own threads regardless.
    BLAS_THREADS: int = Field(default=1, ge=1, le=256)
    EMBED_BATCH_SIZE: int = Field(default=64, ge=1)
    # Intra-op threads of each forward pass (PyTorch and ONNX Runtime); 0: PyTorch's own
    # count (OMP_NUM_THREADS when set, else one per core). Passes never run two at a time (the
    # model's lock, or the batching worker), so this is how a pass uses several cores
    # (docs/results.md, "Speed per core").
    INFERENCE_THREADS: int = Field(default=0, ge=0, le=256)

    # Dynamic batching (app.ml.infer.batching): concurrent searches and uploads share forward passes
    # of at most INFERENCE_MAX_BATCH images, gathered for at most INFERENCE_MAX_WAIT_MS after
    # the first arrives. 1 image or 0 ms: no batching, each request runs the model itself.
    # More than INFERENCE_QUEUE_SIZE images waiting: 503 with Retry-After.
    INFERENCE_MAX_BATCH: int = Field(default=16, ge=1, le=1024)
    INFERENCE_MAX_WAIT_MS: float = Field(default=2.0, ge=0, le=1000)
    INFERENCE_QUEUE_SIZE: int = Field(default=256, ge=1, le=100_000)

    # Key guessing (app.api.throttle): after AUTH_FAILURE_LIMIT failed keys (unknown, revoked,
    # expired) from one client address within AUTH_FAILURE_WINDOW_SECONDS, requests from it that
    # present a key get 429 with Retry-After for AUTH_LOCKOUT_SECONDS, the key unchecked (a
    # valid one too). 0: no limit. At most AUTH_THROTTLE_MAX_ADDRESSES addresses are remembered
    # (the least recently failed is forgotten first).
    AUTH_FAILURE_LIMIT: int = Field(default=20, ge=0, le=1_000_000)
    AUTH_FAILURE_WINDOW_SECONDS: float = Field(default=60.0, gt=0, le=86_400)
    AUTH_LOCKOUT_SECONDS: float = Field(default=60.0, gt=0, le=86_400)
    AUTH_THROTTLE_MAX_ADDRESSES: int = Field(default=10_000, ge=1, le=10_000_000)
    # Reverse proxies (comma-separated addresses or networks, e.g. "10.0.0.5, 172.16.0.0/12")
    # whose X-Forwarded-For names the client; empty: the peer address is the client, the header
    # is ignored.
    TRUSTED_PROXIES: str = ""

    # Outages (docs/reliability.md). The database: a connection must open (and a pooled one
    # answer a ping) within DB_CONNECT_TIMEOUT_SECONDS; PostgreSQL cancels a statement after
    # DB_STATEMENT_TIMEOUT_SECONDS and the service stops waiting for a server that has not
    # answered one second later; either is a 503 with Retry-After. WORKER_THREADS run the
    # routes; the pool holds as many connections plus 4 (background tasks, /readyz).
    DB_CONNECT_TIMEOUT_SECONDS: float = Field(default=3.0, ge=1, le=600)
    DB_STATEMENT_TIMEOUT_SECONDS: float = Field(default=10.0, ge=0.1, le=86_400)
    WORKER_THREADS: int = Field(default=40, ge=1, le=1000)
    # Uploads and searches that would leave less free space than this in DATA_DIR are refused
    # (507) before anything is written; /readyz is not ready below it.
    MIN_FREE_DISK_MB: float = Field(default=200.0, ge=0)
    # `sketchreid serve` on SIGTERM: requests still running this many seconds later are cut
    # off, then the index is saved (or left to be rebuilt from the database at the next start).
    SHUTDOWN_TIMEOUT_SECONDS: float = Field(default=20.0, gt=0, le=3600)

    # Watchlist alerts (app.services.watchlists) are POSTed as JSON to ALERT_WEBHOOK_URL
    # (empty: stored and shown only) by a background thread: ALERT_WEBHOOK_ATTEMPTS tries, the
    # wait doubling from ALERT_WEBHOOK_BACKOFF_SECONDS, each with ALERT_WEBHOOK_TIMEOUT_SECONDS;
    # at most ALERT_WEBHOOK_QUEUE alerts wait (more are logged and dropped, still stored).
    ALERT_WEBHOOK_URL: str = ""
    ALERT_WEBHOOK_ATTEMPTS: int = Field(default=5, ge=1, le=100)
    ALERT_WEBHOOK_BACKOFF_SECONDS: float = Field(default=1.0, ge=0, le=3600)
    ALERT_WEBHOOK_TIMEOUT_SECONDS: float = Field(default=5.0, gt=0, le=300)
    ALERT_WEBHOOK_QUEUE: int = Field(default=1000, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _defaults_and_safety(self) -> Settings:
        if not self.DATABASE_URL:
            self.DATABASE_URL = f"sqlite:///{self.DATA_DIR / 'sketchreid.db'}"
        if self.ALERT_WEBHOOK_URL and not self.ALERT_WEBHOOK_URL.startswith(
            ("http://", "https://")
        ):
            raise ValueError(
                f"ALERT_WEBHOOK_URL must be an http:// or https:// URL, got "
                f"{self.ALERT_WEBHOOK_URL!r}"
            )
        try:
            parse_networks(self.TRUSTED_PROXIES)
        except ValueError as exc:
            raise ValueError(f"TRUSTED_PROXIES: {exc}") from None
        if self.BACKEND == "onnx" and self.PRECISION == "bf16":
            raise ValueError(
                "BACKEND=onnx runs in fp32 or int8; use BACKEND=torch for PRECISION=bf16"
            )
        if self.BACKEND == "onnx" and not self.MODEL_DEVICE.startswith("cpu"):
            raise ValueError(f"BACKEND=onnx runs on the CPU, not MODEL_DEVICE={self.MODEL_DEVICE}")
        if self.PRECISION == "int8" and self.BACKEND == "torch":
            raise ValueError(
                "PRECISION=int8 runs ONNX Runtime's quantised graphs, which BACKEND=torch does "
                "not: set BACKEND=onnx (or auto), or choose PRECISION fp32, bf16 or auto"
            )
        if self.PRECISION == "int8" and not self.MODEL_DEVICE.startswith("cpu"):
            raise ValueError(
                "PRECISION=int8 runs on the CPU (ONNX Runtime), "
                f"not MODEL_DEVICE={self.MODEL_DEVICE}"
            )
        if self.INDEX_BACKEND == "pgvector" and not self.DATABASE_URL.startswith("postgresql"):
            raise ValueError(
                "INDEX_BACKEND=pgvector keeps the vectors in PostgreSQL: set "
                "SKETCHREID_DATABASE_URL to a PostgreSQL server with the pgvector extension "
                f"(postgresql+psycopg://...), not {self.DATABASE_URL.split(':', 1)[0]}"
            )
        if self.ENV == "production":
            problems = []
            if self.DATABASE_URL.startswith("sqlite"):
                problems.append(
                    "SKETCHREID_DATABASE_URL must point at PostgreSQL "
                    "(postgresql+psycopg://user:password@host/db), not SQLite"
                )
            if not self.DATA_DIR.is_absolute():
                problems.append(
                    f"SKETCHREID_DATA_DIR must be an absolute path, not {self.DATA_DIR}"
                )
            if problems:
                raise ValueError("unsafe settings for ENV=production: " + "; ".join(problems))
        return self

    @property
    def max_upload_bytes(self) -> int:
        return int(self.MAX_UPLOAD_MB * 1024 * 1024)

    @property
    def max_batch_bytes(self) -> int:
        return int(self.MAX_BATCH_MB * 1024 * 1024)

    @property
    def trusted_proxies(self) -> tuple[IPNetwork, ...]:
        return parse_networks(self.TRUSTED_PROXIES)

    @property
    def blob_dir(self) -> Path:
        return self.DATA_DIR / "blobs"

    @property
    def index_dir(self) -> Path:
        return self.DATA_DIR / "index"

    @property
    def onnx_dir(self) -> Path:
        """ONNX exports of the served bundle (a cache, re-made from the bundle when absent)."""
        return self.DATA_DIR / "onnx"

    @property
    def search_dir(self) -> Path:
        """Per-search artefacts (the sketch as uploaded, the translated image)."""
        return self.DATA_DIR / "searches"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return load_settings()


def load_settings(**overrides: object) -> Settings:
    """Build ``Settings`` (environment + ``overrides``); bad values raise ``SketchReidError``."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            lines.append(f"{where}: {err['msg']}")
        raise SketchReidError("invalid settings: " + "; ".join(lines)) from None
