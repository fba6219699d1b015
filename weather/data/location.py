"""Where an archive lives: a local path or an fsspec URL (light: no xarray, dask or fsspec).

The command line and the service keep URLs as text (a `pathlib.Path` would fold ``https://`` into
``https:/``) and local paths as `Path`; `weather.data.reader.open_archive` takes either.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(source: object) -> bool:
    """Whether a source is an fsspec URL (``scheme://...``, not ``file://``), not a local path."""
    return isinstance(source, str) and bool(_URL.match(source)) and not source.startswith("file://")


def as_source(text: str | Path) -> str | Path:
    """A command-line or settings value as a source: URLs stay text, the rest become paths
    (``file://`` URLs included)."""
    if isinstance(text, Path):
        return text
    if is_url(text):
        return text
    return Path(text.removeprefix("file://"))


def exists(source: str | Path) -> bool:
    """Whether a local source exists; URLs are assumed to (opening them says why not)."""
    return True if is_url(source) else Path(source).exists()


def storage_options(text: str | None) -> dict[str, Any]:
    """``--storage-options`` JSON (an object) as a dict; raises ValueError naming the problem."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as error:
        raise ValueError(f"storage options: not JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError("storage options: must be a JSON object, e.g. '{\"anon\": true}'")
    return value
