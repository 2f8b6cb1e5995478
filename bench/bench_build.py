"""What a real index build picks at scale: `index.build` end to end on real-like served rows.

bench_index measures candidate indexes on held-out queries; this runs the build the service
runs (`build_product_index` with the bundle's served query kinds and prefix index, as
`train.build_index` calls it) on n rows drawn around a real index's vectors (bench_index's
real-like data) and records what it chose: the factory of each index, the tuned search efforts
and the recall/speed curves it measured on its own held-out queries (made from index rows).

    python -m bench.bench_build --n 400000 --real-index RUN/index --bundle RUN/bundle
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_index import dataset
from bench.common import machine_info, write_results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400_000, help="rows to build over")
    parser.add_argument("--real-index", required=True, help="index whose vectors are the centres")
    parser.add_argument("--bundle", required=True, help="its bundle (served query kinds, prefix)")
    parser.add_argument("--real-spread", type=float, default=1.0,
                        help="noise norm in median nearest-neighbour distances")
    parser.add_argument("--work", default="", help="where the index is built (default: temp)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recall-tie-epsilon", type=float, default=None,
                        help="BuildConfig.recall_tie_epsilon (default: its default; 0: id recall)")
    parser.add_argument("--out", default="bench_build", help="results name")
    args = parser.parse_args(argv)
    import tempfile

    from embedder.bundle import Bundle
    from index.build import build_product_index
    from index.metadata import ProductRecord
    from index.plan import BuildConfig

    load_start = os.getloadavg()
    data_args = argparse.Namespace(real_index=args.real_index, real_spread=args.real_spread,
                                   d=0, clusters=0, spread=0.0, seed=args.seed)
    xb, _, about, _ = dataset("real", args.n, 1, data_args)
    bundle = Bundle.load(args.bundle)
    config = BuildConfig(seed=args.seed)
    if args.recall_tie_epsilon is not None:
        config = replace(config, recall_tie_epsilon=args.recall_tie_epsilon)
    rows = np.random.default_rng(config.seed).choice(args.n, config.n_eval_queries, replace=False)
    records = [ProductRecord(id=f"p{i}", title=f"t{i}", category=f"C{i % 50}", image="",
                             attributes={}) for i in range(args.n)]
    with tempfile.TemporaryDirectory(dir=args.work or None) as work:
        t0 = time.perf_counter()
        manifest = build_product_index(
            Path(work) / "index", records, xb, bundle.fingerprint, config=config,
            query_sets=bundle.served_probe_queries(xb[np.sort(rows)]),
            prefix_dims=bundle.served_prefix_dims)
        seconds = time.perf_counter() - t0
    build: dict[str, Any] = manifest["build"]
    prefix = build.get("prefix", {})
    print(f"{args.n} rows x {xb.shape[1]}: built in {seconds:.0f} s")
    print(f"main: {manifest['factory']}, effort {build.get('search_effort')}, "
          f"recall@10 by queries {build.get('recall_at_10_by_queries')}")
    chosen = {t["search_effort"]: t["recall_at_10"] for t in prefix.get("tuning", [])}
    print(f"prefix: {manifest.get('prefix', {}).get('factory')}, effort "
          f"{prefix.get('search_effort')}, recall@10 {chosen.get(prefix.get('search_effort'))}")
    path = write_results(args.out, {
        "machine": machine_info(),
        "load_average_at_start": load_start,
        "load_average_at_end": os.getloadavg(),
        "parameters": vars(args),
        "dataset": about,
        "baseline": "the curves hold every effort the build tried (efforts below the chosen "
                    "one miss the target; two past it are measured), same queries",
        "build_seconds": round(seconds, 1),
        "factory": manifest["factory"],
        "prefix_factory": manifest.get("prefix", {}).get("factory"),
        "build": build,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
