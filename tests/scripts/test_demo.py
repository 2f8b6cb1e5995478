"""scripts/demo.sh decides when to (re)build the demo model: HUSE_CATALOG always wins over a
model cached from another catalog. Run with a stub `python` that records its calls and fakes
each step's output, so the shell logic is tested in milliseconds with nothing installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
GENERATORS = ("sample_catalog.py", "sample_drawing.py")  # a newer one rewrites the sample
STUB_ENV = """ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$ROOT/bin:$PATH"
cd "$ROOT"
"""
# Arguments as demo.sh passes them: -m train.huse sample-catalog OUT | --catalog C --out D.
STUB_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$ROOT_CALLS"
case "$*" in
  "-m train.huse sample-catalog "*) mkdir -p "$4"; echo "id,title" > "$4/catalog.csv";;
  "-m train.huse --catalog "*)
    [ -z "${STUB_FAIL:-}" ] || exit 1
    mkdir -p "$6/index"; echo "{}" > "$6/index/manifest.json"; echo "$4" > "$6/trained-on";;
  "-c "*) echo generated-key;;
esac
"""

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "train").mkdir()
    shutil.copy(REPO_ROOT / "scripts" / "demo.sh", root / "scripts" / "demo.sh")
    (root / "scripts" / "env.sh").write_text(STUB_ENV)
    for generator in GENERATORS:
        (root / "train" / generator).write_text("# generator\n")
    stub = root / "bin" / "python"
    stub.write_text(STUB_PYTHON)
    stub.chmod(0o755)
    return root


def demo(repo: Path, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    calls = repo / "calls.txt"
    calls.unlink(missing_ok=True)
    result = subprocess.run(
        ["bash", str(repo / "scripts" / "demo.sh")],
        env={**os.environ, "ROOT_CALLS": str(calls), "HUSE_PORT": "0", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, calls.read_text().splitlines() if calls.exists() else []


def trainings(calls: list[str]) -> list[str]:
    return [c for c in calls if c.startswith("-m train.huse --catalog")]


def test_sample_model_is_built_once_then_served(repo: Path) -> None:
    result, calls = demo(repo)
    assert result.returncode == 0, result.stderr
    assert calls[0] == "-m train.huse sample-catalog runs/sample"
    sample = "runs/sample/catalog.csv"
    assert trainings(calls) == [f"-m train.huse --catalog {sample} --out runs/demo.new"]
    assert calls[-1].startswith("-m api --model runs/demo ")
    assert (repo / "runs/demo/trained-on").read_text().strip() == "runs/sample/catalog.csv"
    assert not (repo / "runs/demo.new").exists()
    _, calls = demo(repo)
    assert trainings(calls) == [] and calls[-1].startswith("-m api --model runs/demo ")


def test_huse_catalog_wins_over_a_cached_model(repo: Path, tmp_path: Path) -> None:
    demo(repo)
    mine = tmp_path / "mine.csv"
    mine.write_text("id,title\n1,a\n")
    _, calls = demo(repo, HUSE_CATALOG=str(mine))
    assert trainings(calls) == [f"-m train.huse --catalog {mine} --out runs/demo.new"]
    assert (repo / "runs/demo/trained-on").read_text().strip() == str(mine)
    _, calls = demo(repo, HUSE_CATALOG=str(mine))
    assert trainings(calls) == []  # same catalog, same content: served as built
    mine.write_text("id,title\n1,a\n2,b\n")
    _, calls = demo(repo, HUSE_CATALOG=str(mine))
    assert len(trainings(calls)) == 1  # edited in place: rebuilt
    _, calls = demo(repo)
    assert len(trainings(calls)) == 1  # back to the sample: rebuilt from it


@pytest.mark.parametrize("generator", GENERATORS)
def test_a_newer_generator_rewrites_the_sample(repo: Path, generator: str) -> None:
    demo(repo)
    later = (repo / "runs/sample/catalog.csv").stat().st_mtime + 10
    os.utime(repo / "train" / generator, (later, later))
    _, calls = demo(repo)
    assert calls[0] == "-m train.huse sample-catalog runs/sample"


def test_missing_catalog_and_failed_training_keep_the_served_model(
    repo: Path, tmp_path: Path
) -> None:
    demo(repo)
    result, calls = demo(repo, HUSE_CATALOG=str(tmp_path / "nope.csv"))
    assert result.returncode == 2 and "no catalog at" in result.stderr and calls == []
    other = tmp_path / "other.csv"
    other.write_text("id,title\n")
    result, _ = demo(repo, HUSE_CATALOG=str(other), STUB_FAIL="1")
    assert result.returncode != 0
    assert (repo / "runs/demo/trained-on").read_text().strip() == "runs/sample/catalog.csv"
