"""Helpers for the heavy imports that only some stages need (torch, VTK, SimpleITK).

Each stage's conda env holds only what it uses, so these are imported inside the functions that need
them; a missing one is named with the env file that provides it. :func:`module_from_package_file`
runs one module of a package whose ``__init__`` imports far more than that module needs (MONAI's
imports every submodule and their optional dependencies: ~10 s of a segmentation job for two files).
"""

from __future__ import annotations

__all__ = ["module_from_package_file", "require"]

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

#: the env file that provides each optional module
ENV = {"torch": "envs/segment.yaml or envs/shape.yaml", "vtk": "envs/mesh.yaml", "SimpleITK": "envs/ingest.yaml"}


def require(name: str) -> ModuleType:
    """Import ``name`` (e.g. ``"torch"``), or raise ImportError saying which env provides it."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ImportError(f"{name} is needed for this stage (in {ENV.get(name.split('.')[0], 'its env file')})") from e


def module_from_package_file(package: str, relpath: str, *, name: str, needs: dict[str, ModuleType] | None = None,
                             env: str = "its env file") -> ModuleType:
    """The module in file ``relpath`` of the installed ``package``, run as is under the private
    ``name`` (cached in ``sys.modules``), without running the package's ``__init__``.

    ``needs``: {module name: module} the file imports from its own package, put in ``sys.modules``
    only while it runs (an import of the full dotted name finds it there and touches no parent
    package). A package already imported is used as is: ``package.relpath`` by its real name.
    """
    if name in sys.modules:
        return sys.modules[name]
    dotted = f"{package}.{relpath.removesuffix('.py').replace('/', '.')}"
    if package in sys.modules:  # its __init__ has run already: nothing to save
        return importlib.import_module(dotted)
    spec = importlib.util.find_spec(package)  # a top-level package: found, not imported
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{package} is needed for this stage (in {env})")
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    if not path.is_file():
        raise ImportError(f"{path}: {dotted} is missing from the installed {package} (version changed?)")
    mspec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(mspec)
    added = {k: v for k, v in (needs or {}).items() if k not in sys.modules}
    sys.modules.update(added)
    sys.modules[name] = mod
    try:
        mspec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        for k in added:
            sys.modules.pop(k, None)
    return mod
