"""The sample sheet: loading, schema validation with row-level messages, path resolution.

One row per scan (columns in ``config/schemas/samples.schema.yaml``). Paths resolve relative to the
sheet; every path must lie under one of the config's ``allowed_roots``. A bad sheet stops the run
before any job starts with ``SampleSheetError`` naming the row and the problem.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import yaml

PATH_COLUMNS = ("image", "echoes", "labels", "reference_labels")
#: study-level folders under results/ that a sample id may not shadow
RESERVED_IDS = {"models", "export", "tables", "figures", "demo", "logs", "benchmarks", "provenance", "report"}
SCHEMA = Path(__file__).resolve().parents[2] / "config" / "schemas" / "samples.schema.yaml"


class SampleSheetError(ValueError):
    """A problem in the sample sheet; the message names the sheet, the row and the problem."""


def _load_schema(schema_path: str | os.PathLike | None) -> dict:
    return yaml.safe_load(Path(schema_path or SCHEMA).read_text())


def read_sheet(path: str | os.PathLike) -> pd.DataFrame:
    p = Path(path)
    if not p.exists():
        raise SampleSheetError(f"{p}: sample sheet does not exist")
    try:
        df = pd.read_csv(p, sep="\t", dtype=str, comment="#", keep_default_na=False)
    except Exception as e:  # pandas raises several parser errors
        raise SampleSheetError(f"{p}: unreadable sample sheet ({e})") from None
    df.columns = [c.strip() for c in df.columns]
    return df.apply(lambda col: col.str.strip())


#: schema keywords the vectorised pre-check understands; any other keyword sends every row to jsonschema
_VECTOR_KEYWORDS = {"type", "pattern", "enum", "description"}


def _suspect_rows(df: pd.DataFrame, schema: dict) -> list[int]:
    """Row positions jsonschema must look at: those failing a column's pattern/enum, or all rows.

    A sheet of 10k rows validated row by row costs seconds on every Snakemake start (every cluster
    job); the column checks are vectorised and jsonschema only words the messages for bad rows.
    """
    import re
    import warnings

    props = schema["properties"]
    if any(set(p) - _VECTOR_KEYWORDS or p.get("type", "string") != "string" for p in props.values()):
        return list(range(len(df)))
    bad = pd.Series(False, index=df.index)
    for col in df.columns:
        p, v = props[col], df[col]
        given = v != ""
        if "pattern" in p:
            with warnings.catch_warnings():  # a pattern with groups is fine: only a match is wanted
                warnings.simplefilter("ignore", UserWarning)
                bad |= given & ~v.str.contains(re.compile(p["pattern"]), regex=True)
        if "enum" in p:
            bad |= given & ~v.isin(p["enum"])
    for col in schema.get("required", []):
        bad |= df[col] == ""
    return [i for i, b in enumerate(bad.to_numpy()) if b]


def _resolve(raw: str, base: Path, cache: dict[str, Path]) -> Path:
    """``(base / raw).resolve()`` with the folder's resolution cached (sheets list many files per folder)."""
    p = Path(raw) if os.path.isabs(raw) else base / raw
    parent, name = os.path.split(os.path.normpath(p))
    if parent not in cache:
        cache[parent] = Path(parent).resolve()
    out = cache[parent] / name
    return out.resolve() if out.is_symlink() else out


def validate_sheet(
    df: pd.DataFrame,
    sheet: str | os.PathLike,
    allowed_roots: list[str | os.PathLike],
    *,
    produced: set[str] | None = None,
    conventions: set[str] | None = None,
    schema_path: str | os.PathLike | None = None,
    workdir: str | os.PathLike = ".",
) -> pd.DataFrame:
    """Validate the sheet and return it with absolute, resolved paths and typed columns.

    Parameters
    ----------
    df : the raw sheet (all strings, '' for empty cells).
    sheet : the sheet's path; relative paths in it resolve against its folder.
    allowed_roots : folders (relative to ``workdir``) that paths may point into.
    produced : absolute paths the workflow itself writes (e.g. the demo's synthetic knees); they may
        be missing now.
    conventions : known label-convention names.
    """
    from kneeflow.schema import jsonschema

    sheet = Path(sheet)
    schema = _load_schema(schema_path)
    problems: list[str] = []
    missing_cols = [c for c in schema.get("required", []) if c not in df.columns]
    if missing_cols:
        raise SampleSheetError(f"{sheet}: missing required column(s) {missing_cols}; columns are {list(df.columns)}")
    known = set(schema["properties"])
    extra = [c for c in df.columns if c not in known]
    if extra:
        raise SampleSheetError(f"{sheet}: unknown column(s) {extra}; allowed: {sorted(known)}")
    validator = jsonschema().Draft202012Validator(schema)
    records = df.to_dict("records")
    records = [{k: v for k, v in rec.items() if v != ""} for rec in records]
    for i in _suspect_rows(df, schema):
        rec = records[i]
        where = f"{sheet}: row {i + 2} (sample {rec.get('sample', '?')!r})"
        for err in sorted(validator.iter_errors(rec), key=lambda e: list(e.path)):
            col = ".".join(str(x) for x in err.path) or "row"
            msg = err.message
            if err.validator == "pattern" and col == "sample":
                msg = f"{rec.get('sample')!r} is not a valid id: use letters, digits, '_' and '-' only"
            problems.append(f"{where}: column {col}: {msg}")
    for i in [int(j) for j in (df["sample"].isin(RESERVED_IDS)).to_numpy().nonzero()[0]]:
        where = f"{sheet}: row {i + 2} (sample {records[i]['sample']!r})"
        problems.append(f"{where}: sample id {records[i]['sample']!r} is reserved for a study-level results folder")
    dup = df["sample"][df["sample"].duplicated(keep=False)]
    for sid in sorted(set(dup)):
        rows = [int(r) + 2 for r in df.index[df["sample"] == sid]]
        problems.append(f"{sheet}: rows {rows}: duplicate sample id {sid!r}")
    if problems:
        raise SampleSheetError("\n".join(problems))

    roots = [Path(workdir, r).resolve() for r in allowed_roots]
    cache: dict[str, Path] = {}
    produced = {str(Path(p).resolve()) for p in (produced or set())}
    for i, rec in enumerate(records):
        where = f"{sheet}: row {i + 2} (sample {rec['sample']!r})"
        if "image" not in rec and "labels" not in rec:
            problems.append(f"{where}: give an `image`, a `labels` map, or both")
        if "labels" in rec and "label_convention" not in rec:
            problems.append(f"{where}: `labels` is given without `label_convention` (e.g. canonical or pymskt)")
        if conventions is not None and rec.get("label_convention") and rec["label_convention"] not in conventions:
            problems.append(f"{where}: unknown label_convention {rec['label_convention']!r}; known: {sorted(conventions)}")
        for col in PATH_COLUMNS:
            if col not in rec:
                continue
            raw = rec[col]
            path = _resolve(raw, sheet.parent, cache)
            if not any(path == r or r in path.parents for r in roots):
                problems.append(
                    f"{where}: column {col}: {raw!r} resolves to {path}, outside the allowed roots "
                    f"{[str(r) for r in roots]} (config allowed_roots)"
                )
                continue
            if str(path) not in produced and not path.exists():
                problems.append(f"{where}: column {col}: file not found: {path}")
            # paths inside the working directory stay relative, so they match rule outputs
            wd = Path(workdir).resolve()
            rec[col] = os.path.relpath(path, wd) if wd in path.parents else str(path)
    if problems:
        raise SampleSheetError("\n".join(problems))
    out = pd.DataFrame.from_records(records)
    for col in schema["properties"]:
        if col not in out.columns:
            out[col] = None
    out = out.where(pd.notna(out), None)
    return out.set_index("sample", drop=False)


def load_samples(
    sheet: str | os.PathLike,
    allowed_roots: list[str | os.PathLike],
    *,
    produced: set[str] | None = None,
    conventions: set[str] | None = None,
    workdir: str | os.PathLike = ".",
) -> pd.DataFrame:
    """Read and validate a sample sheet (see :func:`validate_sheet`)."""
    return validate_sheet(
        read_sheet(sheet), sheet, allowed_roots, produced=produced, conventions=conventions, workdir=workdir
    )
