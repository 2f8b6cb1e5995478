"""Form fields shared by the classify and search routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import File, Form, UploadFile

ImageField = Annotated[
    UploadFile | None, File(description="product photo (JPEG, PNG, WebP, GIF, BMP, TIFF)")
]
TitleField = Annotated[str | None, Form(description="product title")]
KField = Annotated[int | None, Form(description="results per answer (default 5)")]
