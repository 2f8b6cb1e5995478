"""Product images the service stores and serves.

Uploads are kept under `uploads_dir/<sha256>.<ext>` (content-addressed, written atomically, so
products with the same image share one file), and the metadata store records them relative to
the media root. The service deletes an upload once no live product records it. Serving only
ever opens a path the service or the catalog build wrote into the metadata store, never one a
client names.

A response streams from a file it opened before sending anything, so its content cannot vanish
mid-body; deleting a file that readers hold open is deferred until the last of them finishes
(and called off if the same content is stored again meanwhile).
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from fastapi import UploadFile
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api.errors import ApiError
from embedder.images import sha256_bytes
from huse_common.atomic import write_atomic

logger = logging.getLogger(__name__)

# Formats browsers show as they are; others (e.g. TIFF) are stored re-encoded as PNG.
WEB_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}
MEDIA_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}
_CHUNK = 64 * 1024


async def read_upload(upload: UploadFile | None, max_bytes: int) -> bytes | None:
    """Read an uploaded file in chunks, refusing it (413) as soon as it passes `max_bytes`.

    An absent part, or the empty part a browser sends for an untouched file input, is None.
    """
    if upload is None:
        return None
    chunks: list[bytes] = []
    total = 0
    while chunk := await upload.read(_CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise ApiError(413, "too_many_bytes", f"image upload exceeds {max_bytes} bytes")
        chunks.append(chunk)
    if total == 0 and not upload.filename:
        return None
    return b"".join(chunks)


class ImageStore:
    """Content-addressed image files under `uploads_dir`, resolved relative to `media_root`."""

    def __init__(self, uploads_dir: Path, media_root: Path) -> None:
        self.uploads_dir = Path(uploads_dir)
        self.media_root = Path(media_root)
        # Open readers per file, and files whose deletion waits for their readers.
        self._lock = threading.Lock()
        self._readers: Counter[Path] = Counter()
        self._doomed: set[Path] = set()

    def save(self, data: bytes, decoded: Image.Image) -> str:
        """Store validated image bytes; returns the path to record (relative to the media root).

        `decoded` is the RGB image from `load_image`; it is what gets stored for formats that
        browsers cannot show.
        """
        with Image.open(io.BytesIO(data)) as probe:
            fmt = probe.format or ""
        ext = WEB_FORMATS.get(fmt)
        if ext is None:
            buf = io.BytesIO()
            decoded.save(buf, format="PNG")
            data, ext = buf.getvalue(), "png"
        target = self.uploads_dir / f"{sha256_bytes(data)}.{ext}"
        with self._lock:
            self._doomed.discard(target)  # wanted again: a deferred deletion is called off
        if not target.exists():
            write_atomic(target, data)
        return target.relative_to(self.media_root).as_posix()

    def discard(self, recorded: str) -> bool:
        """Delete a stored upload; True if a file went. Paths outside `uploads_dir` (catalog
        images, anything else a record names) are never touched."""
        path = self.resolve(recorded)
        if path is None or not path.resolve().is_relative_to(self.uploads_dir.resolve()):
            return False
        with self._lock:
            if self._readers[path]:
                self._doomed.add(path)
                logger.info("deleting upload %s once its readers finish", recorded)
                return False
            path.unlink(missing_ok=True)
        logger.info("deleted upload %s: no product records it any more", recorded)
        return True

    def open(self, recorded: str) -> StoredImageResponse | None:
        """A response streaming the recorded image from a file opened now; None if absent.

        Until the response has been sent (or abandoned), the file counts as read, so `discard`
        defers deleting it.
        """
        path = self.resolve(recorded)
        if path is None:
            return None
        with self._lock:
            try:
                file = open(path, "rb")  # noqa: SIM115 - the response closes it
            except OSError:
                return None
            self._readers[path] += 1
        return StoredImageResponse(file, MEDIA_TYPES[path.suffix.lower()], lambda: self._done(path))

    def _done(self, path: Path) -> None:
        """One reader of `path` finished: carry out a deletion deferred for it."""
        with self._lock:
            self._readers[path] -= 1
            if self._readers[path] > 0:
                return
            del self._readers[path]
            if path in self._doomed:
                self._doomed.discard(path)
                path.unlink(missing_ok=True)
                logger.info("deleted upload %s after its last reader", path.name)

    def resolve(self, recorded: str) -> Path | None:
        """The file behind a recorded image path, or None if absent or not an image file."""
        if not recorded:
            return None
        path = Path(recorded)
        if not path.is_absolute():
            path = self.media_root / path
        if path.suffix.lower() not in MEDIA_TYPES or not path.is_file():
            return None
        return path


class StoredImageResponse(Response):
    """200 with an image streamed from an already open file; closes it and reports `on_done`
    when sent, when the client goes away, or when sending fails."""

    def __init__(
        self,
        file: BinaryIO,
        media_type: str,
        on_done: Callable[[], None],
        status_code: int = 200,  # FastAPI's OpenAPI reads the default status from here
    ) -> None:
        self.file = file
        self.on_done = on_done
        size = os.fstat(file.fileno()).st_size
        super().__init__(
            status_code=status_code,
            media_type=media_type,
            headers={"content-length": str(size), "x-content-type-options": "nosniff"},
        )

    def close(self) -> None:
        """Release the file (idempotent)."""
        if not self.file.closed:
            self.file.close()
            self.on_done()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            start = {"status": self.status_code, "headers": self.raw_headers}
            await send({"type": "http.response.start", **start})
            more = True
            while more:
                chunk = await run_in_threadpool(self.file.read, _CHUNK)
                more = len(chunk) == _CHUNK
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
        finally:
            self.close()
