"""JSON-schema validation of the config and the sample sheet, without jsonschema's slow import.

jsonschema's format checker imports the optional ``rfc3987_syntax`` package when it is installed,
which builds about 40 lark grammars at import: 4.6 s on every Snakemake start, which on a cluster is
every job. Our schemas use no ``iri`` format (the only check that needs it), so the package is kept
out of the import.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml


def jsonschema():
    """Import and return :mod:`jsonschema` with its iri format checker left out (see module doc)."""
    if "jsonschema" not in sys.modules:
        sys.modules.setdefault("rfc3987_syntax", None)  # None in sys.modules makes the import fail
    import jsonschema as js

    return js


#: libyaml's loader where PyYAML has it (the schemas are read on every Snakemake start)
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load(path: str | os.PathLike) -> dict:
    return yaml.load(Path(path).read_text(), Loader=SafeLoader)


def validate_config(config: dict, schema_path: str | os.PathLike) -> None:
    """Raise ``ValueError`` listing every place where ``config`` violates the schema."""
    js = jsonschema()
    validator = js.Draft202012Validator(load(schema_path))
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.path])
    if errors:
        lines = [f"  config.{'.'.join(str(p) for p in e.path) or '<root>'}: {e.message}" for e in errors]
        raise ValueError(f"configuration does not match {schema_path}:\n" + "\n".join(lines))
