"""Where data lives: ``data_dir`` if given, else ``$ZOO_DATA_DIR``, else ``./data``."""

from __future__ import annotations

import os
from pathlib import Path


def default_data_dir() -> Path:
    """``$ZOO_DATA_DIR`` when set, else ``./data`` (relative to the working directory)."""
    return Path(os.environ.get("ZOO_DATA_DIR") or "data")


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    return Path(data_dir).expanduser() if data_dir else default_data_dir()
