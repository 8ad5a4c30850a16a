"""Provenance records: what produced a result, from what, with which code, packages and device.

Every rule script (through :func:`kneeflow.workflow.rule.run`) writes ``<output>.prov.json`` beside each of
its outputs after success: the inputs' sha256, the rule's parameters and wildcards, the kneeflow
version and git commit (and whether the tree was dirty), the versions of the packages loaded in the
job, model weights' sha256 when the rule used any, and the device. ``results/provenance.tsv``
gathers the records of the result tables.
"""

from __future__ import annotations

__all__ = ["LIB", "PACKAGES", "code_hash", "device", "gather", "git_commit", "library_hash",
           "module_closure", "package_versions", "record", "sha256", "sha256_of_dict", "write_sidecars"]

import ast
import functools
import hashlib
import re
import importlib.metadata as md
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import kneeflow
from kneeflow.atomic import atomic_path
from kneeflow.checksum import sha256

#: distributions reported when their module was loaded by the job
PACKAGES = {
    "numpy": "numpy", "scipy": "scipy", "pandas": "pandas", "SimpleITK": "SimpleITK", "pydicom": "pydicom",
    "nibabel": "nibabel", "vtk": "vtk", "pyvista": "pyvista", "pyacvd": "pyacvd", "pymeshfix": "pymeshfix",
    "pymskt": "mskt", "skimage": "scikit-image", "torch": "torch", "monai": "monai", "nnunetv2": "nnunetv2",
    "onnx": "onnx", "onnxruntime": "onnxruntime", "coremltools": "coremltools", "matplotlib": "matplotlib",
    "seaborn": "seaborn", "snakemake": "snakemake",
}
LIB = Path(kneeflow.__file__).resolve().parent




#: `from kneeflow[.x] import a, b` (parentheses may span lines) and `import kneeflow.x`, anywhere in a file
_IMPORT = re.compile(r"^[ \t]*(?:from[ \t]+(kneeflow(?:\.\w+)*)[ \t]+import[ \t]+(\([^)]*\)|[^\n#]+)"
                     r"|import[ \t]+(kneeflow\.[\w.]+))", re.M)


def _kneeflow_imports(source: str) -> set[str]:
    """kneeflow modules a piece of source imports (module level and inside functions).

    Read with a regular expression rather than by walking the syntax tree: the workflow computes
    every rule's code hash when it loads, and a tree walk of the library costs about a million
    Python calls (a few per cent of the dry run of 10k scans)."""
    names = set()
    for module, imported, plain in _IMPORT.findall(source):
        if plain:
            names.add(plain)
        else:  # `from kneeflow.workflow import cli` imports the submodule kneeflow.workflow.cli
            for w in imported.strip("()").replace("\n", " ").split(","):
                sub = f"{module}.{w.split()[0]}" if w.strip() else module
                names.add(sub if _module_file(sub) is not None else module)
    return {n for n in names if _module_file(n) is not None}


def _module_file(name: str) -> Path | None:
    """The source file of a kneeflow module (``kneeflow.x`` -> x.py, a package -> its __init__.py)."""
    parts = name.split(".")[1:]
    if not parts:
        return LIB / "__init__.py"
    rel = Path(*parts)
    for f in (LIB / rel.with_suffix(".py"), LIB / rel / "__init__.py"):
        if f.is_file():
            return f
    return None


@functools.lru_cache(maxsize=None)
def module_closure(name: str) -> frozenset[str]:
    """A kneeflow module and every kneeflow module it imports, transitively (read from the source)."""
    seen, todo = set(), [name]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += sorted(_kneeflow_imports(_module_file(m).read_text()) - seen)
    return frozenset(seen)


def code_hash(*entries: str) -> str:
    """Short hash of the code a job runs, found by reading imports: a rule parameter, so that an edit
    of any kneeflow module the job imports (transitively) plans the job again, and no other edit does.

    An entry is a kneeflow module (``"kneeflow.thickness"``), a script (``"scripts/dice.py"``: its own
    source and what it imports) or one function of a module (``"kneeflow.workflow.cli:thickness"``: the
    module's own source, its module-level kneeflow imports and those inside that function).
    """
    files: dict[str, bytes] = {}
    modules: set[str] = set()
    for entry in entries:
        if entry.endswith(".py"):
            p = Path(entry)
            files[p.name] = p.read_bytes()
            modules |= _kneeflow_imports(files[p.name].decode())
            continue
        mod, _, func = entry.partition(":")
        if not func:
            modules.add(mod)
            continue
        src = _module_file(mod).read_text()
        files[mod] = src.encode()
        lines = src.splitlines()
        tree = ast.parse(src)
        fn = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == func]
        if not fn:
            raise ValueError(f"{mod} has no function {func!r}")
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        text = "\n".join("\n".join(lines[n.lineno - 1:n.end_lineno]) for n in [*top, fn[0]])
        modules |= _kneeflow_imports(text)
    for m in set().union(*(module_closure(m) for m in modules)) if modules else ():
        files[m] = _module_file(m).read_bytes()
    h = hashlib.sha256()
    for k in sorted(files):
        h.update(k.encode() + b"\0" + files[k] + b"\0")
    return h.hexdigest()[:12]


def library_hash(*modules: str) -> str:
    """:func:`code_hash` of kneeflow modules by short name (``"thickness"``) and what they import."""
    return code_hash(*(f"kneeflow.{m}" for m in modules))


def git_commit(repo: str | os.PathLike | None = None) -> dict:
    repo = Path(repo or LIB.parents[1])
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {"commit": None, "dirty": None}


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "kneeflow": kneeflow.__version__}
    for mod, dist in PACKAGES.items():
        if mod in sys.modules:
            try:
                out[dist] = md.version(dist)
            except md.PackageNotFoundError:
                out[dist] = getattr(sys.modules[mod], "__version__", "unknown")
    return out


def device() -> dict:
    d = {"host": platform.node(), "machine": platform.machine(), "cpus": os.cpu_count()}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        d["gpu"] = torch.cuda.get_device_name(0)
    slurm = {k[6:].lower(): v for k, v in os.environ.items()
             if k in ("SLURM_JOB_ID", "SLURM_JOB_PARTITION", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE", "SLURM_MEM_PER_NODE",
                      "SLURM_RESTART_COUNT")}
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        slurm["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
    if "job_id" in slurm and "job_partition" not in slurm:
        # a multi-task job (the SLURM plugin's `mpi` jobs) runs its command with the allocation's
        # variables cleared: ask SLURM for the partition and GPUs
        slurm.update(_slurm_job(slurm["job_id"]))
    if slurm:
        d["slurm"] = slurm
    return d


def _slurm_job(job_id: str) -> dict:
    """Partition and GPUs (TRES) of a SLURM job, from scontrol; {} where SLURM cannot say."""
    try:
        out = subprocess.run(["scontrol", "show", "job", str(job_id)], capture_output=True, text=True,
                             timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    fields = dict(w.split("=", 1) for w in out.split() if "=" in w)
    rec = {"job_partition": fields["Partition"]} if "Partition" in fields else {}
    gpus = [v for k, v in fields.items() if k.startswith("TresPer") and "gpu" in v]
    if gpus:
        rec["job_gpus"] = gpus[0]
    return rec


def _jsonable(v):
    try:
        json.dumps(v)
        return v
    except TypeError:
        if isinstance(v, dict):
            return {str(k): _jsonable(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [_jsonable(x) for x in v]
        return str(v)


def record(rule: str, wildcards: dict, inputs: list[str], params: dict, weights: dict[str, str] | None = None) -> dict:
    return {
        "rule": rule,
        "wildcards": dict(wildcards),
        "inputs": {str(f): sha256(f) for f in inputs if Path(f).exists()},
        "params": _jsonable(params),
        "code": {"kneeflow": kneeflow.__version__, **git_commit()},
        "packages": package_versions(),
        "weights_sha256": weights or {},
        "device": device(),
    }


def write_sidecars(rec: dict, outputs: list[str]) -> None:
    """Write ``<output>.prov.json`` (with the output's own sha256) beside each output."""
    for out in outputs:
        p = Path(out)
        if not p.exists() or p.suffix in (".png", ".pdf"):
            continue  # figures: their data .csv carries the record
        side = p.parent / f"{p.name}.prov.json"
        with atomic_path(side) as tmp:
            tmp.write_text(json.dumps({**rec, "output": str(p), "output_sha256": sha256(p)}, indent=1, sort_keys=True))


def gather(tables: list[str]) -> list[dict]:
    """One row per table: its sidecar's key facts (for results/provenance.tsv)."""
    rows = []
    for t in tables:
        side = Path(f"{t}.prov.json")
        if not side.exists():
            raise FileNotFoundError(f"{t}: no provenance record beside it ({side.name})")
        r = json.loads(side.read_text())
        rows.append({
            "output": t, "output_sha256": r["output_sha256"], "rule": r["rule"],
            "n_inputs": len(r["inputs"]), "inputs_sha256": sha256_of_dict(r["inputs"]),
            "params": json.dumps(r["params"], sort_keys=True), "kneeflow": r["code"]["kneeflow"],
            "git_commit": r["code"]["commit"], "git_dirty": r["code"]["dirty"],
            "packages": ";".join(f"{k}={v}" for k, v in sorted(r["packages"].items())),
            "weights_sha256": json.dumps(r["weights_sha256"], sort_keys=True), "device": r["device"].get("gpu", "cpu"),
            "host": r["device"].get("host"),
        })
    return rows


def sha256_of_dict(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()
