"""JSON-schema validation of the config and the sample sheet, without jsonschema's slow import.

jsonschema's format checker imports the optional ``rfc3987_syntax`` package when it is installed,
which builds about 40 lark grammars at import: 4.6 s on every Snakemake start, which on a cluster is
every job. Our schemas use no ``iri`` format (the only check that needs it), so the package is kept
out of the import.
"""

from __future__ import annotations

__all__ = ["apply_defaults", "defaults", "load", "validate_config"]

import copy
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


def apply_defaults(config: dict, schema: dict) -> dict:
    """Fill ``config`` in place with the schema's ``default`` values where a key is missing (sections
    too: a section's default is its own ``default``, else ``{}`` filled from its properties)."""
    for key, sub in schema.get("properties", {}).items():
        if key not in config:
            if "default" in sub:
                config[key] = copy.deepcopy(sub["default"])
            elif sub.get("type") == "object" and "properties" in sub:
                config[key] = {}
            else:
                continue
        if isinstance(config[key], dict) and "properties" in sub:
            apply_defaults(config[key], sub)
    return config


#: the default config's path (beside this package in the repository)
CONFIG_SCHEMA = Path(__file__).resolve().parents[3] / "config" / "schemas" / "config.schema.yaml"


def defaults(schema_path: str | os.PathLike | None = None) -> dict:
    """Every default of the config schema (the one source of defaults for the rules and the commands)."""
    return apply_defaults({}, load(schema_path or CONFIG_SCHEMA))


def validate_config(config: dict, schema_path: str | os.PathLike) -> None:
    """Fill in the schema's defaults, then raise ``ValueError`` listing every place where ``config``
    violates the schema."""
    js = jsonschema()
    schema = load(schema_path)
    apply_defaults(config, schema)
    validator = js.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.path])
    if errors:
        lines = [f"  config.{'.'.join(str(p) for p in e.path) or '<root>'}: {e.message}" for e in errors]
        raise ValueError(f"configuration does not match {schema_path}:\n" + "\n".join(lines))
