"""Server memory under high-bit-depth uploads (#13): peak RSS of a live `python -m api` while it
classifies a loop of images just under the pixel limit - 16-bit greyscale PNGs and float32
TIFFs, each well under 1 MB on disk - sent by a few concurrent clients.

    python -m bench.bench_hostile_images --model DIR [--requests 32] [--concurrency 4]
        [--repo PATH]   # serve another checkout's code (e.g. main) for the baseline

The server runs over a private copy of the model's bundle + index. Peak RSS is the kernel's
high-water mark (VmHWM in /proc/PID/status), so no short spike is missed between samples.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.common import machine_info, print_table, wait_healthy, write_results

REPO_ROOT = Path(__file__).resolve().parents[1]
# 6000 x 6600 = 39.6 MP, just under the API's default limit of 40 MP.
SIZE = (6000, 6600)


def high_depth_images() -> dict[str, bytes]:
    """A 16-bit greyscale PNG and a float32 TIFF of SIZE with sparse content (small files)."""
    width, height = SIZE
    out = {}
    for name, dtype, fmt, kwargs in (
        ("png16", np.uint16, "PNG", {}),
        ("tiff_float", np.float32, "TIFF", {"compression": "tiff_adobe_deflate"}),
    ):
        values = np.zeros((height, width), dtype=dtype)
        values[::7, ::3] = 60000
        buf = io.BytesIO()
        Image.fromarray(values).save(buf, format=fmt, **kwargs)
        out[name] = buf.getvalue()
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = int(value.split()[0])
    return fields


def run(model: Path, repo: Path, requests: int, concurrency: int) -> dict:
    images = high_depth_images()
    with tempfile.TemporaryDirectory(prefix="bench_hostile_") as tmp:
        copy = Path(tmp) / "model"
        for part in ("bundle", "index"):
            shutil.copytree(model / part, copy / part)
        port = _free_port()
        env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1"}
        cmd = [sys.executable, "-m", "api", "--model", str(copy), "--port", str(port)]
        cmd += ["--log-level", "warning"]
        proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(base, proc, 300)
            idle = _memory_kb(proc.pid)
            names = sorted(images)

            def send(i: int) -> int:
                name = names[i % len(names)]
                files = {"image": (f"{name}.img", images[name])}
                return httpx.post(f"{base}/v1/classify", files=files, timeout=600).status_code

            t0 = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                statuses = list(pool.map(send, range(requests)))
            seconds = time.perf_counter() - t0
            after = _memory_kb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return {
        "repo": str(repo),
        "requests": requests,
        "concurrency": concurrency,
        "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
        "file_bytes": {name: len(data) for name, data in images.items()},
        "idle_rss_mb": round(idle["VmRSS"] / 1024),
        "peak_rss_mb": round(after["VmHWM"] / 1024),
        "rss_after_mb": round(after["VmRSS"] / 1024),
        "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_hostile_images", description=__doc__)
    p.add_argument("--model", type=Path, required=True, help="model dir (bundle/ + index/)")
    p.add_argument(
        "--repo", type=Path, action="append", help="checkout(s) to serve (default: this one)"
    )
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--out", type=Path, help="results dir (default bench/results)")
    args = p.parse_args(argv)
    repos = args.repo or [REPO_ROOT]
    rows = [run(args.model, repo, args.requests, args.concurrency) for repo in repos]
    print_table(
        rows,
        [
            "repo",
            "requests",
            "concurrency",
            "statuses",
            "idle_rss_mb",
            "peak_rss_mb",
            "rss_after_mb",
            "seconds",
        ],
    )
    path = write_results(
        "bench_hostile_images", {"machine": machine_info(), "runs": rows}, args.out
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
