"""One helper for the heavy imports that only some stages need (torch, VTK, SimpleITK).

Each stage's conda env holds only what it uses, so these are imported inside the functions that need
them; a missing one is named with the env file that provides it.
"""

from __future__ import annotations

__all__ = ["require"]

import importlib
from types import ModuleType

#: the env file that provides each optional module
ENV = {"torch": "envs/segment.yaml or envs/shape.yaml", "vtk": "envs/mesh.yaml", "SimpleITK": "envs/ingest.yaml"}


def require(name: str) -> ModuleType:
    """Import ``name`` (e.g. ``"torch"``), or raise ImportError saying which env provides it."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ImportError(f"{name} is needed for this stage (in {ENV.get(name.split('.')[0], 'its env file')})") from e
