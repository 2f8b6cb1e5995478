"""`python -m train.huse` through `main()`: every user mistake is one line naming the fix and
exit code 2 (no traceback unless --debug); the subcommands; --resume through run()."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from train.huse import USAGE_ERROR, build_parser, main
from train.pipeline import BUNDLE_DIR, INDEX_DIR


@pytest.fixture(scope="module")
def rows(sample_catalog) -> list[dict]:
    with open(sample_catalog, newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: list[dict], rename: dict | None = None) -> Path:
    """rows as a CSV beside the sample images (absolute image paths), columns renamed."""
    rename = rename or {}
    fields = [rename.get(k, k) for k in rows[0]]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        writer.writerows(list(r.values()) for r in rows)
    return path


@pytest.fixture()
def tiny_args(pipeline_run) -> list[str]:
    """--set flags for the tiny backbones and a short run (as the session's pipeline run)."""
    cfg, _ = pipeline_run
    return ["--cache-dir", cfg.cache_dir, "--set", f"image_backbone={cfg.image_backbone}",
            "--set", f"text_backbone={cfg.text_backbone}", "--set", "embed_dim=8",
            "--set", "image_towers=[(16,)]", "--set", "text_tower=(16,)", "--set", "max_epochs=2",
            "--set", "num_workers=0", "--set", "device='cpu'", "--set", "index_factory='Flat'",
            "--no-progress"]


def absolute_images(rows: list[dict], catalog: Path) -> list[dict]:
    return [{**r, "image": str((catalog.parent / r["image"]).resolve())} for r in rows]


def one_error_line(capsys) -> str:
    """The last stderr line (backbone loading may draw progress bars before it)."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error: ") for line in lines) == 1, err
    return lines[-1]


def test_missing_catalog(tmp_path, capsys):
    code = main(["--catalog", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")])
    assert code == USAGE_ERROR and "no such file" in one_error_line(capsys)
    assert not (tmp_path / "o" / BUNDLE_DIR).exists()


def test_wrong_columns_name_the_column_flag(tmp_path, capsys, rows, sample_catalog):
    catalog = write_csv(tmp_path / "c.csv", absolute_images(rows, sample_catalog),
                        rename={"id": "sku", "title": "name"})
    code = main(["--catalog", str(catalog), "--out", str(tmp_path / "o")])
    line = one_error_line(capsys)
    assert code == USAGE_ERROR and "missing column" in line and "--column" in line


def test_empty_catalog(tmp_path, capsys):
    (tmp_path / "empty.csv").write_text("")
    code = main(["--catalog", str(tmp_path / "empty.csv"), "--out", str(tmp_path / "o")])
    assert code == USAGE_ERROR and "is empty" in one_error_line(capsys)


@pytest.mark.parametrize("item, message", [
    ("lrr=1", "unknown config keys ['lrr']"),
    ("max_epochs='ten'", "max_epochs: 'ten'"),
    ("dropout=1.5", "dropout must be in [0, 1)"),
    ("no_equals_sign", "--set expects key=value"),
])
def test_bad_set(tmp_path, capsys, sample_catalog, item, message):
    code = main(["--catalog", str(sample_catalog), "--out", str(tmp_path / "o"), "--set", item])
    assert code == USAGE_ERROR and message in one_error_line(capsys)


def test_missing_config_file(tmp_path, capsys, sample_catalog):
    code = main(["--catalog", str(sample_catalog), "--out", str(tmp_path / "o"),
                 "--config", str(tmp_path / "preset.json")])
    assert code == USAGE_ERROR and "no such file" in one_error_line(capsys)


def test_bad_column_flag(tmp_path, capsys, sample_catalog):
    code = main(["--catalog", str(sample_catalog), "--out", str(tmp_path / "o"),
                 "--column", "sku"])
    assert code == USAGE_ERROR and "ROLE=COLUMN" in one_error_line(capsys)


def test_out_holding_a_model_needs_overwrite(pipeline_run, capsys):
    cfg, out = pipeline_run
    code = main(["--catalog", cfg.catalog, "--out", str(out)])
    assert code == USAGE_ERROR and "--overwrite" in one_error_line(capsys)


def test_debug_shows_the_traceback(tmp_path):
    from train.config import ConfigError

    with pytest.raises(ConfigError):
        main(["--catalog", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o"), "--debug"])


def test_user_error_in_a_subprocess_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "train.huse", "--catalog",
                           str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == USAGE_ERROR and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")


def test_help_shows_defaults():
    text = build_parser().format_help()
    assert "max_epochs = 60" in text and "--overwrite" in text and "--column" in text


@pytest.mark.parametrize("command", [["features", "--catalog", "c.csv"],
                                     ["evaluate", "b", "--catalog", "c.csv"],
                                     ["build-index", "--bundle", "b", "--catalog", "c",
                                      "--out", "o"]])
def test_options_before_a_command_are_not_overwritten_by_its_defaults(command):
    """`--cache-dir C features ...` used to extract into the default cache: argparse let the
    command's own --cache-dir default replace the value given before it."""
    before = build_parser().parse_args(["--cache-dir", "C", "--no-progress", *command])
    after = build_parser().parse_args([*command, "--cache-dir", "D"])
    neither = build_parser().parse_args(command)
    assert (before.cache_dir, after.cache_dir, neither.cache_dir) == ("C", "D", None)
    if command[0] == "features":
        assert before.no_progress and not neither.no_progress
        assert build_parser().parse_args(["--set", "x=1", *command]).set == ["x=1"]
        assert build_parser().parse_args([*command, "--set", "x=2"]).set == ["x=2"]
        assert neither.set == [] and neither.column == []


def test_one_class_catalog_is_refused_before_training(tmp_path, capsys, rows, sample_catalog,
                                                      tiny_args):
    category = rows[0]["category"]
    same = [r for r in absolute_images(rows, sample_catalog) if r["category"] == category]
    catalog = write_csv(tmp_path / "one.csv", [{**r, "category": category} for r in
                                                absolute_images(rows, sample_catalog)])
    assert len(same) < len(rows)
    code = main(["--catalog", str(catalog), "--out", str(tmp_path / "o"), *tiny_args])
    line = one_error_line(capsys)
    assert code == USAGE_ERROR and "1 leaf category" in line
    assert not (tmp_path / "o" / BUNDLE_DIR).exists()
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_features_subcommand_maps_columns(tmp_path, capsys, rows, sample_catalog, tiny_args):
    catalog = write_csv(tmp_path / "renamed.csv", absolute_images(rows, sample_catalog),
                        rename={"id": "sku", "title": "name", "category": "path"})
    code = main(["features", "--catalog", str(catalog), "--column", "id=sku",
                 "--column", "title=name", "--column", "category=path", *tiny_args])
    assert code == 0
    assert capsys.readouterr().out.startswith(f"{len(rows)} products")


def test_sample_catalog_subcommand(tmp_path):
    assert main(["sample-catalog", str(tmp_path / "s"), "--n", "12", "--seed", "1"]) == 0
    with open(tmp_path / "s" / "catalog.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 12


def test_evaluate_and_build_index_subcommands(pipeline_run, tmp_path, capsys):
    cfg, out = pipeline_run
    bundle = shutil.copytree(out / BUNDLE_DIR, tmp_path / BUNDLE_DIR)
    assert main(["evaluate", str(bundle), "--catalog", cfg.catalog,
                 "--cache-dir", cfg.cache_dir]) == 0
    assert capsys.readouterr().out.strip() == str(bundle / "report.md")
    assert main(["build-index", "--bundle", str(bundle), "--catalog", cfg.catalog,
                 "--out", str(tmp_path / INDEX_DIR), "--cache-dir", cfg.cache_dir]) == 0
    manifest = json.loads((tmp_path / INDEX_DIR / "manifest.json").read_text())
    assert manifest["factory"] == "Flat"  # the bundle's training config, not "auto"


@pytest.mark.slow
def test_resume_through_run_continues_the_history(pipeline_run, tmp_path):
    """A run stopped after 2 epochs and resumed to 3 has the first run's epochs, then one more
    (with --resume an OUT holding a model is accepted without --overwrite)."""
    from dataclasses import replace

    from train.pipeline import run

    cfg, _ = pipeline_run
    short = replace(cfg, out=str(tmp_path / "o"), max_epochs=2, patience=10)
    first = json.loads((run(short) / BUNDLE_DIR / "report.json").read_text())["history"]
    resumed = run(replace(short, max_epochs=3, resume=True))
    history = json.loads((resumed / BUNDLE_DIR / "report.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[:2] == first


def test_bench_dispatch_names_the_benchmarks(capsys):
    from bench.__main__ import main as bench_main

    assert bench_main(["nope"]) == USAGE_ERROR
    assert "{api,embed,index}" in capsys.readouterr().err


def test_entry_points_are_declared():
    import tomllib

    scripts = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())[
        "project"]["scripts"]
    assert scripts == {"huse-train": "train.huse:main", "huse-serve": "api.__main__:main",
                       "huse-bench": "bench.__main__:main"}
