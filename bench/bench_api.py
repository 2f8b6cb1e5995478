"""`python -m bench.bench_api`: latency and throughput of a live `python -m api` on 127.0.0.1.

Closed loop: concurrent clients (threads, one httpx connection each) send text search, image
search and classify (image + title) requests at 1, 8 and 32 clients, against the same model
served with micro-batching on and then off (one model call per request, the baseline). Each cell
is bounded in requests and seconds. With N closed-loop clients the mean latency is N /
throughput (Little's law), so latency is measured open loop too: `--rates 50,100,150` sends
requests at a fixed rate whatever the server does (a dispatcher thread hands each request to a
pool at its scheduled time; latency counts from that time, so a slow server's queue is seen,
not hidden). `--queries N` sets how many distinct catalog products the requests cycle over; the
queries continue across the cells of one server (a later cell never resends an earlier one's),
and with N above the catalog's distinct titles every title is unique (a title that comes round
again gets a numeric suffix), so no repeat is answered by the embedding cache. Each
row reports the generator's own CPU share (this process's CPU seconds / wall / cores), since the
generator runs on the server's cores. Prints a markdown table and writes
bench/results/bench_api.json (or OUT.json with `--out OUT`, for partial runs such as
`--scenarios image_search --clients 8,32`).

The model directory defaults to `runs/bench_api` built from the sample catalog with the default
packaged backbones (`python -m train.huse`), reused when it exists.
"""

from __future__ import annotations

import argparse
import itertools
import os
import queue
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import httpx
import numpy as np

from api.batching import IMAGE_BATCH_MAX
from bench.common import machine_info, print_table, wait_healthy, write_results
from embedder.backbones import ENGINES

REPO_ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("text_search", "image_search", "classify")


@dataclass(frozen=True)
class BenchConfig:
    model: str = ""  # model dir (bundle/ + index/); "" = build runs/bench_api from the sample
    catalog: str = ""  # where queries come from; "" = runs/sample/catalog.csv
    clients: tuple[int, ...] = (1, 8, 32)
    requests_per_cell: int = 96  # requests per (scenario, clients) cell, at least 2 per client
    max_seconds_per_cell: float = 30.0  # clients stop starting requests after this
    warmup_requests: int = 8
    k: int = 10
    batch_max_wait_ms: float = 3.0
    batch_max_size: int = 32
    batch_workers: int = 2
    image_batch_max: int = IMAGE_BATCH_MAX
    image_engine: str = "auto"  # what `python -m api` serves by default (int8 on CPU)
    out: str = "bench_api"  # results name: bench/results/OUT.json (partial runs use another)
    scenarios: tuple[str, ...] = SCENARIOS
    batching_modes: tuple[bool, ...] = (True, False)  # servers to measure (off: the baseline)
    rates: tuple[float, ...] = ()  # open-loop arrival rates (requests/s); () = closed loop only
    open_seconds: float = 20.0  # length of each open-loop cell
    open_threads: int = 64  # most requests in flight in an open-loop cell
    queries: int = 64  # distinct catalog products the requests cycle over
    seed: int = 0


SAMPLE_CATALOG = REPO_ROOT / "runs" / "sample" / "catalog.csv"


def ensure_model(model: str) -> Path:
    """The model dir to serve; builds the sample-catalog model with default backbones if absent."""
    if model:
        return Path(model)
    out = REPO_ROOT / "runs" / "bench_api"
    if not (out / "index" / "manifest.json").exists():
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        huse = [sys.executable, "-m", "train.huse"]
        if not SAMPLE_CATALOG.exists():
            cmd = [*huse, "sample-catalog", str(SAMPLE_CATALOG.parent)]
            subprocess.run(cmd, check=True, cwd=REPO_ROOT, env=env)
        cmd = [*huse, "--catalog", str(SAMPLE_CATALOG), "--out", str(out)]
        subprocess.run(cmd, check=True, cwd=REPO_ROOT, env=env)
    return out


def load_queries(catalog: Path, n: int, seed: int) -> list[tuple[str, bytes]]:
    """(title, image bytes) of n random catalog products with distinct titles: the requests."""
    from embedder.catalog import read_catalog

    products = list({p.title: p for p in read_catalog(catalog).products}.values())
    rng = random.Random(seed)
    picked = rng.sample(products, min(n, len(products)))
    return [(p.title, p.image_path.read_bytes()) for p in picked]


class QueryStream:
    """The requests' queries in order, continuing across the cells of one server, so a later
    cell never repeats what an earlier one sent (the server's embedding cache would answer it).
    With `unique`, a title that comes round again gets a numeric suffix, so text queries stay
    all-unique past the catalog's distinct titles (images, keyed by their pixels, do not)."""

    def __init__(self, queries: Sequence[tuple[str, bytes]], unique: bool) -> None:
        self.queries = list(queries)
        self.unique = unique
        self._next = itertools.count()  # thread-safe in CPython

    def __len__(self) -> int:
        return len(self.queries)

    def take(self) -> tuple[str, bytes]:
        i = next(self._next)
        title, image = self.queries[i % len(self.queries)]
        lap = i // len(self.queries)
        return (f"{title} {lap}" if self.unique and lap else title), image


class Server:
    """`python -m api` in a subprocess on a free 127.0.0.1 port; `extra`: more arguments
    (`--bundle B --index I` instead of a model dir)."""

    def __init__(self, model_dir: Path | None, batching: bool, cfg: BenchConfig,
                 log_path: Path, extra: Sequence[str] = ()) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        args = [sys.executable, "-m", "api", "--port", str(self.port), *extra]
        if model_dir is not None:
            args += ["--model", str(model_dir)]
        args += ["--log-level", "warning", "--batch-max-size", str(cfg.batch_max_size)]
        args += ["--batch-max-wait-ms", str(cfg.batch_max_wait_ms)]
        args += ["--batch-workers", str(cfg.batch_workers)]
        args += ["--image-batch-max", str(cfg.image_batch_max)]
        args += ["--image-engine", cfg.image_engine]
        if not batching:
            args.append("--no-batching")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        env.pop("HUSE_API_KEY", None)
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=self.log, stderr=self.log)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_healthy(self.url, self.proc, 180, f"; see {log_path}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()


def _request(client: httpx.Client, scenario: str, query: tuple[str, bytes], k: int) -> None:
    title, image = query
    if scenario == "text_search":
        r = client.post("/v1/search", data={"title": title, "k": str(k)})
    elif scenario == "image_search":
        r = client.post("/v1/search", data={"k": str(k)}, files={"image": ("q.jpg", image)})
    else:
        files = {"image": ("q.jpg", image)}
        r = client.post("/v1/classify", data={"title": title, "k": "5"}, files=files)
    if r.status_code != 200:
        raise RuntimeError(f"{scenario}: HTTP {r.status_code}: {r.text[:200]}")


def _record(client: httpx.Client, scenario: str, query: tuple[str, bytes], k: int, since: float,
            latencies: list[float], errors: list[str], lock: threading.Lock) -> bool:
    """Send one request; record its latency from `since` (or its error). True on success."""
    try:
        _request(client, scenario, query, k)
    except Exception as e:  # counted and reported, never hidden
        with lock:
            errors.append(str(e))
        return False
    with lock:
        latencies.append(time.perf_counter() - since)
    return True


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc; 0.0 where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measured_cell(pid: int, batching: bool, cell: Callable[[], dict]) -> dict:
    """Run one load cell and add the server's CPU milliseconds per answered request during it
    (less sensitive to other jobs on the machine than requests/s) and the batching mode."""
    cpu0 = process_cpu_seconds(pid)
    row = cell()
    used = process_cpu_seconds(pid) - cpu0
    n = row["requests"]
    row["server_cpu_ms_per_req"] = round(1e3 * used / n, 3) if n else None
    row["batching"] = "on" if batching else "off"
    return row


def _stats(latencies: list[float], errors: list[str], wall: float, cpu_s: float) -> dict:
    lat_ms = np.array(latencies) * 1000.0
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "seconds": round(wall, 2),
        "req_per_s": len(latencies) / wall if wall > 0 else 0.0,
        "p50_ms": float(np.percentile(lat_ms, 50)) if len(lat_ms) else None,
        "p95_ms": float(np.percentile(lat_ms, 95)) if len(lat_ms) else None,
        "p99_ms": float(np.percentile(lat_ms, 99)) if len(lat_ms) else None,
        "generator_cpu_share": round(cpu_s / (wall * (os.cpu_count() or 1)), 3) if wall else None,
        "load_avg_1m": os.getloadavg()[0],
    }


def warm_clients(url: str, n: int) -> list[httpx.Client]:
    """n httpx clients, each with its connection open (a GET /healthz), made before a cell's
    clock starts: a client costs milliseconds of the generator's CPU to build (its SSL context)
    and a connection to open, which belong to the generator, not to the server's latency."""
    clients = [httpx.Client(base_url=url, timeout=120) for _ in range(n)]
    for client in clients:
        client.get("/healthz").raise_for_status()
    return clients


def run_open_loop(url: str, scenario: str, rate: float, queries: QueryStream,
                  cfg: BenchConfig) -> dict:
    """Requests at `rate`/s for `open_seconds`, each sent at its scheduled time by a pool of
    `open_threads` (started, with their connections open, before the clock); latency from the
    scheduled time (a request the pool could not start on time counts its wait). Returns latency
    stats, the rate achieved and how late sends were."""
    total = max(1, int(rate * cfg.open_seconds))
    idle: queue.SimpleQueue[httpx.Client] = queue.SimpleQueue()
    clients = warm_clients(url, cfg.open_threads)
    for client in clients:
        idle.put(client)
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    late: list[float] = []

    def send(due: float) -> None:
        client = idle.get()
        start = time.perf_counter()
        query = queries.take()
        if _record(client, scenario, query, cfg.k, due, latencies, errors, lock):
            with lock:
                late.append(start - due)
        idle.put(client)

    with ThreadPoolExecutor(cfg.open_threads) as pool:
        started = threading.Barrier(cfg.open_threads + 1)
        for _ in range(cfg.open_threads):  # every pool thread exists before the clock starts
            pool.submit(started.wait)
        started.wait()
        cpu0, start = _cpu_seconds(), time.perf_counter()
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(send, due)
    wall = time.perf_counter() - start
    for client in clients:
        client.close()
    row = _stats(latencies, errors, wall, _cpu_seconds() - cpu0)
    row.update(scenario=scenario, mode="open", rate=rate, clients=None,
               late_p99_ms=float(np.percentile(late, 99)) * 1e3 if late else None)
    return row


def run_cell(url: str, scenario: str, n_clients: int, queries: QueryStream,
             cfg: BenchConfig) -> dict:
    """n_clients threads (each with a client made and connected before the clock) share
    `requests_per_cell` requests; returns latency stats and req/s."""
    total = max(cfg.requests_per_cell, 2 * n_clients)
    counter = iter(range(total))
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    clients = warm_clients(url, n_clients)
    started = threading.Barrier(n_clients + 1)
    bounds: dict[str, float] = {}

    def client_loop(client: httpx.Client) -> None:
        started.wait()
        while time.perf_counter() < bounds["deadline"]:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            query = queries.take()
            _record(client, scenario, query, cfg.k, time.perf_counter(), latencies, errors, lock)

    threads = [threading.Thread(target=client_loop, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    cpu0, start = _cpu_seconds(), time.perf_counter()
    bounds["deadline"] = start + cfg.max_seconds_per_cell
    started.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    for client in clients:
        client.close()
    row = _stats(latencies, errors, wall, _cpu_seconds() - cpu0)
    row.update(scenario=scenario, mode="closed", clients=n_clients)
    return row


def parse_args(argv: list[str] | None) -> BenchConfig:
    p = argparse.ArgumentParser(prog="python -m bench.bench_api", description=__doc__)
    p.add_argument("--model", default="", help="model dir (default: build runs/bench_api)")
    p.add_argument("--catalog", default="", help="queries from (default runs/sample)")
    p.add_argument("--clients", default="1,8,32", help="comma-separated client counts")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset")
    p.add_argument("--batch-max-size", type=int, default=BenchConfig.batch_max_size)
    p.add_argument("--batch-workers", type=int, default=BenchConfig.batch_workers)
    p.add_argument("--batch-max-wait-ms", type=float, default=BenchConfig.batch_max_wait_ms)
    p.add_argument("--image-batch-max", type=int, default=BenchConfig.image_batch_max)
    p.add_argument("--image-engine", choices=ENGINES, default=BenchConfig.image_engine)
    p.add_argument("--out", default=BenchConfig.out, help="results name (bench/results/OUT.json)")
    p.add_argument("--requests", type=int, default=BenchConfig.requests_per_cell)
    p.add_argument("--max-seconds", type=float, default=BenchConfig.max_seconds_per_cell)
    p.add_argument("--rates", default="", help="open-loop requests/s, comma-separated")
    p.add_argument("--open-seconds", type=float, default=BenchConfig.open_seconds)
    p.add_argument("--queries", type=int, default=BenchConfig.queries,
                   help="distinct products the requests cycle over (>= requests: all unique)")
    p.add_argument("--no-unbatched", action="store_true", help="skip the batching-off server")
    args = p.parse_args(argv)
    clients = tuple(int(c) for c in args.clients.split(",") if c)
    unknown = set(args.scenarios.split(",")) - set(SCENARIOS)
    if unknown:
        raise ValueError(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")
    if clients and min(clients) < 1:
        raise ValueError(f"--clients must be positive integers, got {args.clients!r}")
    return BenchConfig(
        model=args.model,
        catalog=args.catalog,
        scenarios=tuple(s for s in args.scenarios.split(",") if s),
        batch_max_size=args.batch_max_size,
        batch_workers=args.batch_workers,
        batch_max_wait_ms=args.batch_max_wait_ms,
        image_batch_max=args.image_batch_max,
        image_engine=args.image_engine,
        out=args.out,
        clients=clients,
        requests_per_cell=args.requests,
        max_seconds_per_cell=args.max_seconds,
        rates=tuple(float(r) for r in args.rates.split(",") if r),
        open_seconds=args.open_seconds,
        queries=args.queries,
        batching_modes=(True,) if args.no_unbatched else (True, False),
    )


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    model_dir = ensure_model(cfg.model)
    catalog = Path(cfg.catalog) if cfg.catalog else SAMPLE_CATALOG
    picked = load_queries(catalog, cfg.queries, cfg.seed)
    unique = cfg.queries > len(picked)  # more asked for than the catalog has: all-unique titles
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batching in cfg.batching_modes:
            server = Server(model_dir, batching, cfg, Path(tmp) / "server.log")
            queries = QueryStream(picked, unique)  # a fresh server: a fresh cache
            try:
                health = httpx.get(f"{server.url}/healthz").json()
                for scenario in cfg.scenarios:
                    for _ in range(cfg.warmup_requests):
                        with httpx.Client(base_url=server.url, timeout=120) as client:
                            _request(client, scenario, queries.take(), cfg.k)
                    for n_clients in cfg.clients:
                        row = _measured_cell(server.proc.pid, batching, partial(
                            run_cell, server.url, scenario, n_clients, queries, cfg))
                        rows.append(row)
                        print(
                            f"batching {row['batching']:3} {scenario:12} {n_clients:3} clients: "
                            f"{row['req_per_s']:.1f} req/s, p50 {row['p50_ms']:.0f} ms",
                            file=sys.stderr,
                        )
                    for rate in cfg.rates:
                        row = _measured_cell(server.proc.pid, batching, partial(
                            run_open_loop, server.url, scenario, rate, queries, cfg))
                        rows.append(row)
                        print(f"batching {row['batching']:3} {scenario:12} open {rate:g}/s: "
                              f"{row['req_per_s']:.1f} req/s, p99 {row['p99_ms']:.0f} ms",
                              file=sys.stderr)
            finally:
                server.stop()
    columns = ["scenario", "mode", "clients", "rate", "batching", "req_per_s", "p50_ms", "p95_ms",
               "p99_ms", "late_p99_ms", "generator_cpu_share", "server_cpu_ms_per_req",
               "load_avg_1m"]
    rows.sort(key=lambda r: (SCENARIOS.index(r["scenario"]), r["mode"], r["clients"] or 0,
                             r.get("rate") or 0, r["batching"]))
    print_table(rows, [*columns, "requests", "errors"])
    path = write_results(
        cfg.out,
        {
            "machine": machine_info(),
            "parameters": {**asdict(cfg), "model_dir": str(model_dir)},
            "model": health["model"],
            "index_size": health["index"]["size"],
            "baseline": "batching off: one model call per request in a thread pool",
            "load_average_at_end": os.getloadavg(),
            "results": rows,
        },
    )
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
