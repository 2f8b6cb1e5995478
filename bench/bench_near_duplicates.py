"""Near-duplicate listings: precision and recall on planted duplicates, through the CLI.

A catalog gets n planted copies of distinct products (JPEG re-encoded at low quality, cropped
a few percent, or resized; new ids, same title, category and attributes:
train.near_duplicates.plant_duplicates). The bundle embeds it into an index
(`python -m train.huse build-index`), `python -m train.huse near-duplicates` lists the pairs,
and they are scored against the planted pairs plus the catalog's own byte-identical images.

    python -m bench.bench_near_duplicates --bundle B [--catalog C] [--n 150] [--threshold T]
"""

from __future__ import annotations

import argparse
import csv
import logging
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.bench_photo import default_catalog
from bench.common import machine_info, print_table, write_results
from train.near_duplicates import CSV_FILE, DUPLICATE_KINDS, DuplicatePair, pair_metrics

logger = logging.getLogger(__name__)


def _cli(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "train.huse", *args], text=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if done.returncode:
        raise RuntimeError(f"train.huse {args[0]} failed: {done.stderr[-3000:]}")


def run(bundle: Path, catalog: Path, n: int, seed: int, work: Path,
        threshold: float | None = None, cache_dir: str | None = None) -> dict[str, Any]:
    from train.near_duplicates import plant_duplicates

    planted_catalog, truth = plant_duplicates(catalog, work / "planted", n, seed)
    cache = ["--cache-dir", cache_dir] if cache_dir else []
    _cli("build-index", "--bundle", str(bundle), "--catalog", str(planted_catalog), "--out",
         str(work / "index"), *cache)
    _cli("near-duplicates", "--bundle", str(bundle), "--index", str(work / "index"),
         "--out", str(work / "dups"),
         *(["--threshold", str(threshold)] if threshold is not None else []))
    with open(work / "dups" / CSV_FILE, newline="") as f:
        found = [DuplicatePair(r["id_a"], r["id_b"], float(r["similarity"]))
                 for r in csv.DictReader(f)]
    rows = [{"pairs": "all", **pair_metrics(found, truth)}]
    for kind in DUPLICATE_KINDS:
        kind_truth = {p for p in truth if any(i.endswith(f"-dup-{kind}") for i in p)}
        hit = sum(frozenset((p.a, p.b)) in kind_truth for p in found)
        rows.append({"pairs": f"planted {kind}", "pairs_planted": len(kind_truth),
                     "true_positives": hit, "recall": hit / len(kind_truth)})
    return {"rows": rows, "planted": n, "seed": seed, "threshold": threshold,
            "bundle": str(bundle), "catalog": str(catalog)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_near_duplicates", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--catalog", type=Path, default=default_catalog())
    p.add_argument("--n", type=int, default=150, help="planted duplicates")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--cache-dir")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.bundle, args.catalog, args.n, args.seed, Path(tmp), args.threshold,
                     args.cache_dir)
    print_table(result["rows"], ["pairs", "pairs_planted", "pairs_found", "true_positives",
                                 "precision", "recall"])
    print(write_results("bench_near_duplicates", {"machine": machine_info(), **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
