"""`python -m api` / huse-serve: each user mistake is one line naming the fix, exit code 2,
found before anything is served (no "open http://..."); --debug shows the traceback."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from api.__main__ import USAGE_ERROR, UsageError, main

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_env_settings(monkeypatch):
    for name in ("HUSE_MODEL_DIR", "HUSE_BUNDLE_DIR", "HUSE_INDEX_DIR", "HUSE_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def _error_line(capsys, argv: list[str]) -> str:
    assert main(argv) == USAGE_ERROR
    out, err = capsys.readouterr()
    assert "open http" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("huse-serve: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_no_model(capsys):
    line = _error_line(capsys, ["--port", "0"])
    assert "--model DIR" in line and "huse-train" in line


def test_model_dir_that_does_not_exist(capsys, tmp_path):
    line = _error_line(capsys, ["--model", str(tmp_path / "nope")])
    assert "does not exist" in line and "--out" in line


def test_directory_that_is_not_a_model(capsys, tmp_path):
    (tmp_path / "bundle").mkdir()
    (tmp_path / "index").mkdir()
    line = _error_line(capsys, ["--model", str(tmp_path)])
    assert "bundle directory" in line and "config.json" in line and "not a trained model" in line


def test_missing_bundle_file(capsys, model_dir):
    (model_dir / "bundle" / "towers.safetensors").unlink()
    line = _error_line(capsys, ["--model", str(model_dir)])
    assert "towers.safetensors" in line


def test_missing_index(capsys, model_dir):
    shutil.rmtree(model_dir / "index")
    line = _error_line(capsys, ["--model", str(model_dir)])
    assert "index directory" in line and "does not exist" in line


def test_index_of_another_bundle(capsys, model_dir):
    labels = model_dir / "bundle" / "labels.json"
    labels.write_text(labels.read_text() + "\n")
    line = _error_line(capsys, ["--model", str(model_dir)])
    assert "another bundle" in line and "rebuild the index" in line


def test_backbone_directory_not_on_this_machine(capsys, model_dir):
    config_file = model_dir / "bundle" / "config.json"
    config = json.loads(config_file.read_text())
    config["image_backbone"]["spec"] = "hf:/nowhere/tiny_vit"
    config_file.write_text(json.dumps(config))
    line = _error_line(capsys, ["--model", str(model_dir)])
    assert "hf:/nowhere/tiny_vit" in line and "not on this machine" in line


def test_bad_setting_value(capsys, model_dir):
    line = _error_line(capsys, ["--model", str(model_dir), "--batch-max-size", "0"])
    assert "--batch-max-size" in line and "greater than or equal to 1" in line


def test_busy_port(capsys, model_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = _error_line(capsys, ["--model", str(model_dir), "--port", str(port)])
    assert f"127.0.0.1:{port}" in line and "--port" in line


def test_model_that_fails_to_load(capsys, model_dir):
    """A damaged file the checks cannot see: the server's startup fails, still one line."""
    (model_dir / "index" / "meta.sqlite").write_bytes(b"not a database" * 100)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["--model", str(model_dir), "--port", str(port)]) == USAGE_ERROR
    out, err = capsys.readouterr()
    assert "open http" not in out and "Traceback" not in err
    errors = [line for line in err.splitlines() if "ERROR" in line or "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("huse-serve: error: "), err
    assert "could not be loaded" in errors[0] and "CorruptIndexError" in errors[0]


def test_debug_shows_the_traceback(capsys, tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        main(["--model", str(tmp_path / "nope"), "--debug"])


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for default in ("(default: 32)", "(default: 3.0)", "(default: 127.0.0.1)",
                    "(default: 8000)", "(default: auto)", "(default: 4)"):
        assert default in out, default


def test_process_exit_code_and_one_line(tmp_path):
    """The real entry point: exit code 2 and one line on stderr, nothing on stdout."""
    proc = subprocess.run(
        [sys.executable, "-m", "api", "--model", str(tmp_path / "missing")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)},
    )
    assert proc.returncode == 2
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
