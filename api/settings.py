"""Service settings: typed defaults, `HUSE_` environment variables, never built at import time."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from api.batching import IMAGE_BATCH_MAX


class Settings(BaseSettings):
    """Everything `create_app` needs; `python -m api` fills it from flags and the environment.

    `model_dir` is a directory written by `python -m train.huse --out D` (D/bundle + D/index);
    `bundle_dir`/`index_dir` name the two parts explicitly instead. Uploaded product images go
    to `uploads_dir` (default: beside the index, `<model_dir>/uploads`).
    """

    model_config = SettingsConfigDict(env_prefix="HUSE_", extra="ignore")

    model_dir: Path | None = None
    bundle_dir: Path | None = None
    index_dir: Path | None = None
    uploads_dir: Path | None = None
    # Bearer key for writes (HUSE_API_KEY); None refuses every write.
    api_key: SecretStr | None = None
    # Upload limits: bytes of one image, decoded pixels, smallest side, title length.
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(default=40_000_000, ge=1)
    min_image_side: int = Field(default=16, ge=1)
    max_title_chars: int = Field(default=1000, ge=1)
    max_attributes_chars: int = Field(default=10_000, ge=2)
    # k bounds for classify/search.
    default_k: int = Field(default=5, ge=1)
    max_k: int = Field(default=100, ge=1)
    # Micro-batching of model calls across concurrent requests.
    batching: bool = True
    batch_max_size: int = Field(default=32, ge=1)
    batch_max_wait_ms: float = Field(default=3.0, ge=0.0)
    batch_workers: int = Field(default=2, ge=1)
    # Most image (or fused) requests in one model call: per-image CPU cost does not fall with
    # batch size, so a big image batch only makes everyone in it wait (text batches stay big).
    image_batch_max: int = Field(default=IMAGE_BATCH_MAX, ge=1)
    # How the image backbone runs: "torch", or "onnx" (ONNX Runtime, CPU, needs extra 'onnx').
    image_engine: Literal["torch", "onnx", "auto"] = "auto"
    # Threads that run model calls when micro-batching is off (one request per call).
    unbatched_workers: int = Field(default=8, ge=1)
    # Overrides the bundle's "other" threshold for classification when set.
    other_threshold: float | None = None
    # Hostile-input bounds (#13): working memory of one image decode, of all concurrent
    # decodes together, and the nesting of JSON (request bodies and the attributes field).
    max_decode_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    decode_budget_bytes: int = Field(default=512 * 1024 * 1024, ge=1024 * 1024)
    max_json_depth: int = Field(default=32, ge=1)
    # Connection bounds (#13): seconds a client has to send a request's headers and body, and
    # the most connections served at once (more get 503) - see README "Behind a reverse proxy".
    request_read_timeout_s: float = Field(default=30.0, gt=0)
    max_connections: int = Field(default=1000, ge=1)

    @model_validator(mode="after")
    def _resolve_dirs(self) -> Settings:
        if self.model_dir is not None:
            self.bundle_dir = self.bundle_dir or self.model_dir / "bundle"
            self.index_dir = self.index_dir or self.model_dir / "index"
        if self.bundle_dir is None or self.index_dir is None:
            raise ValueError(
                f"need model_dir or both bundle_dir and index_dir, got model_dir={self.model_dir}, "
                f"bundle_dir={self.bundle_dir}, index_dir={self.index_dir}"
            )
        if self.uploads_dir is None:
            self.uploads_dir = (self.model_dir or self.index_dir.parent) / "uploads"
        if self.default_k > self.max_k:
            raise ValueError(f"default_k={self.default_k} exceeds max_k={self.max_k}")
        if self.api_key is not None and not self.api_key.get_secret_value():
            self.api_key = None
        return self

    @property
    def media_root(self) -> Path:
        """Relative image paths in the metadata store resolve against this directory."""
        assert self.uploads_dir is not None
        return self.uploads_dir.parent
