"""sha256 of a file or a folder: weights' checksums, inputs in provenance records."""

from __future__ import annotations

__all__ = ["sha256"]

import hashlib
import os
from pathlib import Path

def sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file, or of a folder's files (sorted relative paths and contents)."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():
        for f in sorted(x for x in p.rglob("*") if x.is_file() and not x.name.endswith(".prov.json")):
            h.update(str(f.relative_to(p)).encode())
            h.update(sha256(f).encode())
        return h.hexdigest()
    with open(p, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
