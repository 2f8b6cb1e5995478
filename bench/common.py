"""Shared helpers for `python -m bench.NAME` scripts: machine facts, JSON results, tables."""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huse_common.atomic import write_atomic

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_VERSIONED = ("numpy", "faiss", "torch", "transformers", "onnxruntime")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def machine_info() -> dict[str, Any]:
    """Describe the machine so numbers from different runs can be compared honestly.

    Versions are reported only for modules already imported by the benchmark, so asking
    for them never pays for importing torch in a benchmark that does not use it.
    """
    versions: dict[str, str] = {"python": platform.python_version()}
    for name in _VERSIONED:
        if name in sys.modules:
            module = importlib.import_module(name)
            versions[name] = str(getattr(module, "__version__", "unknown"))
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "ram_bytes": _ram_bytes(),
        "platform": platform.platform(),
        "versions": versions,
    }
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info["cuda"] = bool(torch.cuda.is_available())
        if info["cuda"]:
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_results(name: str, payload: Mapping[str, Any], results_dir: Path | None = None) -> Path:
    """Write bench/results/NAME.json atomically (tmp + fsync + rename) and return its path."""
    out_dir = Path(results_dir) if results_dir is not None else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}.json"
    text = json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"
    write_atomic(target, text.encode())
    return target


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Render rows as a markdown table; missing cells print as empty."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Print rows as a markdown table (benchmarks are CLIs, so printing is their job)."""
    print(format_table(rows, columns))


def wait_healthy(url: str, proc: Any, timeout_s: float, log_hint: str = "") -> None:
    """Return once `url`/healthz answers 200; RuntimeError if `proc` (a Popen) exits first."""
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}{log_hint}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.3)
    raise TimeoutError(f"server not ready{log_hint}")
