"""Where a live server's CPU goes under load: py-spy samples `python -m api` while closed-loop
clients send text searches (`--scenario image_search` or `classify`: photos), and each sampled
stack is charged to one cost (its innermost frame that names one: the model, image decoding, the
index, SQLite, parsing, serialisation, hand-offs, the HTTP server). Needs py-spy (dev extra)
and permission to read the server's memory (root or ptrace).

    python -m bench.bench_profile --model DIR [--catalog CSV] [--clients 32] [--seconds 40]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.bench_api import SCENARIOS, BenchConfig, QueryStream, Server, load_queries, run_cell
from bench.common import machine_info, print_table, write_results

# cost -> substrings of a frame; a stack goes to the first cost its innermost frames name
COSTS = {
    "model: backbone in ONNX Runtime": ("onnxruntime",),
    "model: tokenizer": ("tokenization_utils", "tokenizers"),
    "image: decode and preprocess (Pillow, numpy)": ("PIL/", "embedder/images.py", "colour.py"),
    "model: towers and fusion (torch)": ("torch/", "towers.py"),
    "index: FAISS search": ("_swigfaiss", "faiss/"),
    "index: SQLite metadata reads": ("metadata.py", "sqlite3"),
    "request: multipart form parsing": ("multipart", "formparsers"),
    "response: pydantic / JSON serialisation": ("pydantic", "jsonable_encoder", "json/encoder"),
    "hand-off: micro-batching queue and futures": ("batching.py", "concurrent/futures", "queue.py"),
    "hand-off: thread pool (anyio)": ("anyio",),
    "HTTP server (uvicorn, h11, asyncio, starlette)": ("h11", "uvicorn", "asyncio", "starlette",
                                                       "fastapi"),
}
TOP_FRAMES = 6  # innermost frames listed per cost
# innermost frames of a thread that waits rather than works
IDLE = ("wait (threading.py", "select (selectors", "get (queue.py", "_worker (concurrent",
        "acquire", "sleep")


def breakdown(raw: Path) -> tuple[dict[str, float], int, dict[str, list]]:
    """Share of active samples per cost from py-spy's raw (collapsed) output, and each cost's
    most sampled innermost frames (where to look next)."""
    totals: collections.Counter[str] = collections.Counter()
    frames_of: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if any(k in frames[-1] for k in IDLE):
            continue
        name = next((cost for frame in reversed(frames) for cost, keys in COSTS.items()
                     if any(k in frame for k in keys)),
                    "other: " + re.sub(r" \(.*", "", frames[-1]))
        totals[name] += int(count)
        frames_of[name][frames[-1]] += int(count)
    active = sum(totals.values())
    top = {k: [(f, round(n / active, 4)) for f, n in frames_of[k].most_common(TOP_FRAMES)]
           for k in totals}
    return {k: round(v / active, 4) for k, v in totals.most_common()}, active, top


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model dir (bundle/ + index/)")
    p.add_argument("--catalog", required=True, help="queries: distinct titles from here")
    p.add_argument("--scenario", choices=SCENARIOS, default="text_search")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=int, default=40)
    p.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    p.add_argument("--gil", action="store_true",
                   help="sample only the thread holding the GIL (what serialises a Python "
                   "server), not every thread (which also counts threads waiting for the GIL "
                   "inside C calls that released it: SQLite, FAISS, ONNX Runtime)")
    p.add_argument("--out", default="bench_profile", help="results name")
    args = p.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    cfg = BenchConfig(image_engine="auto", requests_per_cell=10**6,
                      max_seconds_per_cell=args.seconds + 5)
    queries = QueryStream(load_queries(Path(args.catalog), 10**6, 0), unique=True)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(args.model), True, cfg, Path(tmp) / "server.log")
        try:
            run_cell(server.url, args.scenario, 4, queries, BenchConfig(requests_per_cell=50))
            raw = Path(tmp) / "profile.raw"
            sampler = subprocess.Popen(
                [spy, "record", "--pid", str(server.proc.pid), "--duration", str(args.seconds),
                 "--rate", str(args.rate), "--format", "raw", "--threads",
                 *(["--gil"] if args.gil else ["--idle"]),
                 "-o", str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            load = run_cell(server.url, args.scenario, args.clients, queries, cfg)
            sampler.wait()
        finally:
            server.stop()
        shares, active, top = breakdown(raw)
    rows = [{"cost": k, "share_of_active_samples": v} for k, v in shares.items()]
    print_table(rows, ["cost", "share_of_active_samples"])
    path = write_results(args.out, {
        "machine": machine_info(),
        "load_average_at_start": load_start,
        "load_average_at_end": os.getloadavg(),
        "parameters": vars(args),
        "baseline": "shares of the same run's active samples (a breakdown, not a comparison)",
        "load": load,
        "active_samples": active,
        "breakdown": shares,
        "top_frames": top,
    })
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
