"""Crash-safe file writes: a reader sees the old bytes or the new bytes, never a mix."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a rename is durable only once its directory is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a fresh temp path beside `path`; on success fsync it and rename it over `path`.

    A crash at any point leaves `path` as it was (plus, at worst, a stale `.tmp`). The temp name
    is unique, so concurrent writers of the same target never write into each other's file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(name, 0o644)  # mkstemp makes 0600; artifacts are meant to be readable like any file
    tmp = Path(name)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def rename(src: Path, dst: Path) -> None:
    """Rename src over dst (a file, or a directory onto a free name) and sync the directory,
    so the rename survives a crash."""
    os.replace(src, dst)
    fsync_path(Path(dst).parent)


def write_atomic(path: Path, data: bytes) -> str:
    """Atomically replace `path` with `data`; return the sha256 of `data`."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Checksum a file in 1 MiB blocks so large snapshots need no second copy in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
