"""Domain errors of the embedder package; the API maps each to a 4xx JSON answer in one place."""

from __future__ import annotations


class HuseError(Exception):
    """Base class of every domain error the service raises on purpose."""


class CatalogError(HuseError):
    """The catalog as a whole cannot be read (missing file, missing column, unknown format)."""


class MissingColumnsError(CatalogError):
    """The catalog lacks required columns (they may exist under other names)."""


class ImageError(HuseError):
    """One image cannot be used; `reason` is a short machine-readable code.

    Codes: missing_file, too_many_bytes, not_an_image, truncated, too_many_pixels, too_small,
    unsupported_mode.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class BundleError(HuseError):
    """A model bundle directory is missing files or its weights do not match its config."""


class BackboneError(HuseError):
    """A backbone spec is unknown or its weights cannot be loaded offline."""


class FeatureCacheError(HuseError):
    """A feature cache file holds vectors of another backbone or of the wrong size."""
