"""Settings precedence: `python -m api` flags, then HUSE_* environment variables, then the
defaults (which come from huse_common.limits where they are limits; k and title bounds are the
request schemas', read from the same module)."""

from pathlib import Path

import pytest

from api.__main__ import build_parser, build_settings
from api.requests import SearchCreate
from api.settings import Settings
from huse_common import limits


def test_defaults_then_environment_then_explicit(monkeypatch, tmp_path):
    for name in ("HUSE_BATCH_MAX_SIZE", "HUSE_MAX_UPLOAD_BYTES", "HUSE_MODEL_DIR"):
        monkeypatch.delenv(name, raising=False)
    base = Settings(model_dir=tmp_path)
    assert base.bundle_dir == tmp_path / "bundle" and base.index_dir == tmp_path / "index"
    assert base.max_upload_bytes == limits.MAX_UPLOAD_BYTES
    k_bounds = SearchCreate.model_json_schema()["properties"]["k"]
    assert (k_bounds["default"], k_bounds["maximum"]) == (limits.DEFAULT_K, limits.MAX_K)
    monkeypatch.setenv("HUSE_BATCH_MAX_SIZE", "7")
    monkeypatch.setenv("HUSE_MODEL_DIR", str(tmp_path / "from-env"))
    from_env = Settings()
    assert from_env.batch_max_size == 7 and from_env.model_dir == tmp_path / "from-env"
    assert Settings(batch_max_size=3).batch_max_size == 3  # explicit beats the environment


def test_flags_override_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HUSE_BATCH_MAX_SIZE", "7")
    monkeypatch.setenv("HUSE_IMAGE_ENGINE", "torch")
    args = build_parser().parse_args(["--model", str(tmp_path), "--batch-max-size", "2"])
    flagged = build_settings(args)
    assert flagged.batch_max_size == 2 and flagged.image_engine == "torch"
    assert flagged.model_dir == Path(tmp_path)


def test_bad_values_are_refused(monkeypatch, tmp_path):
    for name in ("HUSE_MODEL_DIR", "HUSE_BUNDLE_DIR", "HUSE_INDEX_DIR"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="max_upload_bytes"):  # lower the limit, never raise it
        Settings(model_dir=tmp_path, max_upload_bytes=limits.MAX_UPLOAD_BYTES + 1)
    with pytest.raises(ValueError, match="model_dir"):
        Settings()
