"""GET /healthz's answer: what is loaded, how big the index is, how batching is set."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

from api.schemas import HealthPublic

_VERSIONED = ("huse-search", "fastapi", "torch", "transformers", "faiss-cpu", "numpy", "pillow")


def health(services: Any) -> HealthPublic:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    settings, bundle = services.settings, services.bundle
    config = bundle.config
    return HealthPublic(
        status="ok",
        model={
            "bundle_dir": str(settings.bundle_dir),
            "fingerprint": bundle.fingerprint,
            "dim": int(bundle.dim),
            "heads": list(bundle.heads),
            "image_backbone": config.image_backbone.spec,
            "image_engine": bundle.backbone("image").engine,
            "text_backbone": config.text_backbone.spec,
            "text_engine": bundle.backbone("text").engine,
            "other_threshold": services.threshold,
            # the served default of POST /v1/search's visual_weight (the page's slider start);
            # None when the bundle has no visual block (searches rank by HUSE alone)
            "visual_weight": bundle.served.visual_weight if bundle.served is not None else None,
        },
        index={
            "index_uri" if settings.index_uri else "index_dir": str(settings.index_target),
            "size": len(services.index),
            "factory": services.index.factory,
            "search_effort": services.index.search_effort,
            # columns of the prefix index that title queries search (index.store); None: none
            "prefix_dims": getattr(services.index, "prefix_dims", None),
        },
        batching={
            "enabled": settings.batching,
            "max_batch": settings.batch_max_size,
            "max_wait_ms": settings.batch_max_wait_ms,
            "image_max": settings.image_batch_max,
        },
        versions=versions,
    )
