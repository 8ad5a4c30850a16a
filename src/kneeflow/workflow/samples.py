"""The sample sheet: loading, schema validation with row-level messages, path resolution.

One row per scan (columns in ``config/schemas/samples.schema.yaml``). Paths resolve relative to the
sheet; every path must lie under one of the config's ``allowed_roots``. A bad sheet stops the run
before any job starts with ``SampleSheetError`` naming the row and the problem.
"""

from __future__ import annotations

__all__ = ["PATH_COLUMNS", "RESERVED_IDS", "SCHEMA", "SampleSheetError", "id_pattern", "load_samples",
           "read_sheet", "sample_id_pattern", "validate_sheet"]

import os
import stat
from pathlib import Path

import pandas as pd

PATH_COLUMNS = ("image", "echoes", "labels", "reference_labels")
#: study-level folders under results/ that a sample id may not shadow
RESERVED_IDS = {"models", "export", "tables", "figures", "demo", "logs", "benchmarks", "provenance", "report"}

SCHEMA = Path(__file__).resolve().parents[3] / "config" / "schemas" / "samples.schema.yaml"


class SampleSheetError(ValueError):
    """A problem in the sample sheet; the message names the sheet, the row and the problem."""


def sample_id_pattern(schema_path: str | os.PathLike | None = None) -> str:
    """The workflow's `sample` wildcard: an id as the sheet's schema allows, never a study-level
    folder (results/tables/t2.csv is not sample "tables")."""
    ids = _load_schema(schema_path)["properties"]["sample"]["pattern"].removeprefix("^").removesuffix("$")
    return f"(?!({'|'.join(sorted(RESERVED_IDS))})/){ids}"


def _load_schema(schema_path: str | os.PathLike | None) -> dict:
    from kneeflow.workflow.schema import load

    return load(schema_path or SCHEMA)


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


class _Paths:
    """Resolves the sheet's paths, each folder once (a sheet lists many files per folder): whether a
    path lies under the allowed roots, whether it exists, and how rules name it (relative to the
    working directory when inside it). Plain string operations: a sheet of 10k scans is read on
    every Snakemake start, so on every cluster job too."""

    def __init__(self, roots: list[Path], workdir: Path):
        self.roots = [str(r) for r in roots]
        self.wd = str(workdir)
        self.folders: dict[str, tuple[str, bool, str]] = {}

    @staticmethod
    def _under(path: str, root: str) -> bool:
        return path == root or path.startswith(root.rstrip(os.sep) + os.sep)

    def _describe(self, resolved: str) -> tuple[str, bool, str]:
        """(resolved, inside the allowed roots, the name rules use)"""
        inside = any(self._under(resolved, r) for r in self.roots)
        name = os.path.relpath(resolved, self.wd) if resolved != self.wd and self._under(resolved, self.wd) else resolved
        return resolved, inside, name

    def locate(self, raw: str, base: str) -> tuple[str, bool, bool, str]:
        """(resolved path, inside the allowed roots, exists, the name rules use)"""
        parent, name = os.path.split(os.path.normpath(raw if os.path.isabs(raw) else os.path.join(base, raw)))
        if parent not in self.folders:
            self.folders[parent] = self._describe(os.path.realpath(parent))
        folder, inside, rel = self.folders[parent]
        path = os.path.join(folder, name)
        try:
            link = stat.S_ISLNK(os.lstat(path).st_mode)
        except OSError:
            return path, inside, False, os.path.join(rel, name)
        if not link:
            return path, inside, True, os.path.join(rel, name)
        path, inside, rel = self._describe(os.path.realpath(path))  # a link may lead anywhere
        return path, inside, os.path.exists(path), rel


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
    from kneeflow.workflow.schema import jsonschema

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
    cols = list(df.columns)
    records = [{k: v for k, v in zip(cols, vals) if v != ""} for vals in zip(*(df[c].tolist() for c in cols))]
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
    paths = _Paths(roots, Path(workdir).resolve())
    base = str(sheet.parent)
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
            path, inside, exists, name = paths.locate(raw, base)
            if not inside:
                problems.append(
                    f"{where}: column {col}: {raw!r} resolves to {path}, outside the allowed roots "
                    f"{[str(r) for r in roots]} (config allowed_roots)"
                )
                continue
            if not exists and path not in produced:
                problems.append(f"{where}: column {col}: file not found: {path}")
            # paths inside the working directory stay relative, so they match rule outputs
            rec[col] = name
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


def id_pattern(paths: dict[str, str], wildcard: str = "sample") -> str | None:
    """The pattern that gives every sample's path from its id, if one does, else None.

    ``{"k1": "data/k1.nii.gz", "k2": "data/k2.nii.gz"}`` gives ``"data/{sample}.nii.gz"``; paths that
    are all the same give that path. A rule can then take the sheet's files from a plain pattern
    instead of calling a function per job (about 0.1 ms each while Snakemake builds the graph).
    """
    if not paths:
        return None
    first, path = next(iter(paths.items()))
    if not isinstance(path, str) or "{" in path or "}" in path:
        return None
    pattern = path.replace(first, f"{{{wildcard}}}")
    if all(p == pattern.replace(f"{{{wildcard}}}", s) for s, p in paths.items()):
        return pattern
    return None
