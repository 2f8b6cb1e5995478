"""Service settings: typed defaults, `HUSE_` environment variables, never built at import time."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from api.batching import IMAGE_BATCH_MAX
from huse_common.limits import MAX_JSON_DEPTH, MAX_UPLOAD_BYTES


class Settings(BaseSettings):
    """Everything `create_app` needs; `python -m api` fills it from flags and the environment.

    `model_dir` is a directory written by `python -m train.huse --out D` (D/bundle + D/index);
    `bundle_dir`/`index_dir` name the two parts explicitly instead. Uploaded product images go
    to `uploads_dir` (default: beside the index, `<model_dir>/uploads`).
    """

    model_config = SettingsConfigDict(env_prefix="HUSE_", extra="ignore")

    model_dir: Path | None = Field(None, description="directory with bundle/ and index/")
    bundle_dir: Path | None = Field(None, description="bundle directory (instead of model_dir)")
    index_dir: Path | None = Field(None, description="index directory (instead of model_dir)")
    index_uri: str | None = Field(
        None, description="a Milvus collection instead of index_dir: milvus://host:port/name"
    )
    uploads_dir: Path | None = Field(
        None, description="where uploaded images go (default <model_dir>/uploads)"
    )
    api_key: SecretStr | None = Field(
        None, description="bearer key for writes (HUSE_API_KEY); none refuses every write"
    )
    # Upload limits: bytes of one image, decoded pixels, smallest side. Request fields (k,
    # title, attributes, batch sizes) are bounded by the schemas in api/schemas.py.
    max_upload_bytes: int = Field(
        default=MAX_UPLOAD_BYTES, ge=1024, le=MAX_UPLOAD_BYTES, description="bytes of one image"
    )
    max_pixels: int = Field(default=40_000_000, ge=1)
    min_image_side: int = Field(default=16, ge=1)
    max_batch_body_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="request body limit of the :batch and :bulk routes",
    )
    cors_origins: list[str] = Field(
        default=["*"],
        description='origins allowed to call from a browser (HUSE_CORS_ORIGINS=\'["https://a"]\'); '
        "writes still need the bearer key, and no cookies are used",
    )
    # Micro-batching of model calls across concurrent requests.
    batching: bool = Field(True, description="micro-batch model calls across requests")
    batch_max_size: int = Field(default=32, ge=1, description="most requests per model call")
    batch_max_wait_ms: float = Field(
        default=3.0, ge=0.0, description="how long a batch waits to fill"
    )
    batch_workers: int = Field(default=2, ge=1, description="threads forming and running batches")
    # Most image (or fused) requests in one model call: per-image CPU cost does not fall with
    # batch size, so a big image batch only makes everyone in it wait (text batches stay big).
    image_batch_max: int = Field(
        default=IMAGE_BATCH_MAX, ge=1, description="most image requests per model call"
    )
    image_engine: Literal["torch", "onnx", "onnx-int8", "auto"] = Field(
        "auto",
        description="image backbone runtime: auto (static int8 EfficientNet-Lite0 in ONNX "
        "Runtime on CPU, or the kind the model was trained on; docs/performance.md), onnx "
        "(fp32), onnx-int8, torch",
    )
    text_engine: Literal["torch", "onnx", "onnx-int8", "auto"] = Field(
        "auto",
        description="text backbone runtime: auto (int8 MiniLM in ONNX Runtime on CPU; its "
        "title-search R@10 equals fp32's, docs/performance.md), onnx (fp32), onnx-int8, torch",
    )
    # Threads of torch and of the text model's ONNX session (loaded after the image model,
    # which keeps torch's default). The towers' small matmuls (a batch of <= 32 rows) on a
    # team of 2 OpenMP threads spin-wait: 18 ms of CPU per batch of 16 titles against 1.7 ms on
    # one thread; the text model on one thread per call used 17% less CPU per request at
    # 100 requests/s. 0 leaves torch's default.
    torch_threads: int = Field(
        default=1, ge=0, description="torch and text-model threads (0: torch's default)"
    )
    # numpy's BLAS (OpenBLAS) threads. Its worker threads busy-wait after each call, and the
    # request path's numpy matmuls are small (the visual block's projection of a few photos):
    # with the default team of one thread per core, 32 clients' image searches cost 24.6 ms of
    # server CPU each, on one thread 16.2 (docs/performance.md). 0 leaves the library's default.
    blas_threads: int = Field(
        default=1, ge=0, description="numpy's BLAS threads (0: the library's default)"
    )
    # A search whose index answers in memory runs on the event loop itself when recent
    # searches took under this many ms (wall time, GIL waits included: a photo search's two
    # scans take 2-5 ms under 32 clients): its hand-off to a thread cost ~1 ms of CPU per photo
    # search (docs/performance.md). Slower ones (exact search over tens of thousands of wide
    # rows), filtered ones and any that a write would make wait go to a thread. 0: always.
    inline_search_max_ms: float = Field(
        default=10.0, ge=0.0,
        description="searches recently faster than this run on the event loop (0: never)",
    )
    http_parser: Literal["auto", "h11", "httptools"] = Field(
        "auto", description="HTTP/1.1 parser: auto (httptools where installed, else h11)"
    )
    event_loop: Literal["auto", "asyncio", "uvloop"] = Field(
        "auto",
        description="uvicorn's event loop: auto (uvloop where installed: less CPU per request, "
        "docs/performance.md), asyncio, uvloop",
    )
    # Threads that run model calls when micro-batching is off (one request per call).
    unbatched_workers: int = Field(default=8, ge=1)
    other_threshold: float | None = Field(
        None, description="overrides the bundle's 'other' threshold for classification"
    )
    # Hostile-input bounds (#13): working memory of one image decode, of all concurrent
    # decodes together, and the nesting of JSON (request bodies and the attributes field).
    max_decode_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1024 * 1024, description="working memory of one decode"
    )
    decode_budget_bytes: int = Field(
        default=512 * 1024 * 1024, ge=1024 * 1024, description="memory of all decodes at once"
    )
    max_json_depth: int = Field(
        default=MAX_JSON_DEPTH, ge=1, le=MAX_JSON_DEPTH, description="nesting of request JSON"
    )
    # Connection bounds (#13): seconds a client has to send a request's headers and body, and
    # the most connections served at once (more get 503) - see README "Behind a reverse proxy".
    request_read_timeout_s: float = Field(
        default=30.0, gt=0, description="seconds a request has to arrive whole"
    )
    max_connections: int = Field(
        default=1000, ge=1, description="connections served at once (more get 503)"
    )

    @model_validator(mode="after")
    def _resolve_dirs(self) -> Settings:
        if self.model_dir is not None:
            self.bundle_dir = self.bundle_dir or self.model_dir / "bundle"
            if self.index_uri is None:
                self.index_dir = self.index_dir or self.model_dir / "index"
        if self.bundle_dir is None or self.index_target is None:
            raise ValueError(
                f"need model_dir or both bundle_dir and index_dir, got model_dir={self.model_dir}, "
                f"bundle_dir={self.bundle_dir}, index_dir={self.index_dir}"
            )
        if self.uploads_dir is None:
            beside = self.index_dir.parent if self.index_dir else self.bundle_dir.parent
            self.uploads_dir = (self.model_dir or beside) / "uploads"
        if self.api_key is not None and not self.api_key.get_secret_value():
            self.api_key = None
        return self

    @property
    def index_target(self) -> str | Path | None:
        """What index.stores.open_product_index opens: the Milvus URI, else the directory."""
        return self.index_uri or self.index_dir

    @property
    def media_root(self) -> Path:
        """Relative image paths in the metadata store resolve against this directory."""
        assert self.uploads_dir is not None
        return self.uploads_dir.parent
