"""One atomic writer: write to a temporary name beside the target, then rename over it.

A killed job leaves no partial file (or folder) under the target's name; a failed write leaves
nothing at all.
"""

from __future__ import annotations

__all__ = ["atomic_path", "write_table"]

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (ending in ``suffix``, for writers that go by the
    extension); after the block it replaces ``path`` (a file or a folder), or is removed on error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part{suffix}")
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_table(df, path: str, sep: str = ",", float_format: str | None = "%.6g") -> None:
    """Write a table atomically (temp file + rename); floats to 6 significant digits by default."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep=sep, index=False, float_format=float_format)
