"""Run a rule script from a ``shell:`` directive, as Snakemake's ``script:`` would run it.

The per-sample rules (one job per scan: ingest, labels, thickness, T2, ...) start their script as
``python -m kneeflow.job SPEC --input NAME=PATH ... --output NAME=PATH ... --wildcards NAME=VALUE ...
--scripts DIR --log L ...`` instead of through ``script:``.
Snakemake reads, caches and inspects a ``script:`` file once per job while it builds the graph
(about 1 ms a job here), which made a dry run of 10k scans 2x slower than a workflow of plain
``shell:`` rules (``benchmarks/dag.py``). The script itself is unchanged: it still finds a
``snakemake`` object with ``input``, ``output``, ``params``, ``wildcards``, ``log``, ``rule``,
``threads`` and ``resources``.

SPEC is the rule's parameter ``job`` (JSON, :func:`job_spec`): the rule's name (its script is
``scripts/<rule>.py``), the sha256 of the script and the parameters. Since it is a parameter,
``--list-changes params`` and the ``params`` rerun trigger see a change of any of them, and of the
script's code. The named files and wildcards are on the command line (:func:`job_command`), where
Snakemake fills them in only when the job runs, so they cost nothing while the graph is built.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import runpy
import shlex
import sys
from collections.abc import Callable
from pathlib import Path


class Named(list):
    """A list whose named entries are also attributes and keys, like Snakemake's ``Namedlist``:
    ``x.labels``, ``x["labels"]``, ``x.get("labels")``, ``dict(x)``, ``x.items()``; iterating gives every path, flat."""

    def __init__(self, named: dict | None = None, positional: list | None = None):
        named = dict(named or {})
        flat = list(positional or [])
        for v in named.values():
            flat.extend(v if isinstance(v, list) else [v])
        super().__init__(flat)
        self._named = named

    def __getattr__(self, name):
        try:
            return self.__dict__["_named"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key):
        return self._named[key] if isinstance(key, str) else super().__getitem__(key)

    def get(self, key, default=None):
        return self._named.get(key, default)

    def keys(self):
        return self._named.keys()

    def items(self):
        return self._named.items()


class Job:
    """What a rule script sees as ``snakemake``."""

    def __init__(self, rule: str, spec: dict, log: list[str], threads: int, resources: dict):
        self.rule = rule
        self.input = Named(spec["input"])
        self.output = Named(spec["output"])
        self.params = Named(spec["params"])
        self.wildcards = Named(spec["wildcards"])
        self.log = Named(positional=log)
        self.threads = threads
        self.resources = Named(resources)


def script_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def job_spec(script: str | Path, **params) -> str | Callable:
    """A rule's ``params: job=job_spec("scripts/thickness.py", ray_in=2.5, ...)``; the script is named
    after its rule.

    The result is the job's SPEC as JSON (the rule, the script's sha256 and the parameters), or,
    when a parameter is a function of the wildcards (as in ``params:``), the function Snakemake
    calls once per job to make it. It depends on the wildcards only, never on the input or output
    files, so that Snakemake compares it with the recorded one (``--list-changes params``)."""
    script = Path(script)
    head = {"rule": script.stem, "script_sha256": script_sha256(script)}
    if not any(callable(v) for v in params.values()):
        return json.dumps({**head, "params": params}, sort_keys=True)

    def spec(wildcards) -> str:
        return json.dumps({**head, "params": {k: (v(wildcards) if callable(v) else v) for k, v in params.items()}},
                          sort_keys=True)

    return spec


def job_command(input=(), output=(), wildcards=("sample",), scripts="scripts") -> str:  # noqa: A002
    """A per-sample rule's ``shell:`` command: this module, given the job's named inputs, outputs and
    wildcards (the names as in the rule; Snakemake substitutes the paths), its ``job`` parameter, log,
    threads and resources. An optional input is a named input that may be an empty list."""

    def named(kind, names):
        return " ".join(f"{n}={{{kind}.{n}:q}}" for n in names)

    return (
        f"python -m kneeflow.job {{params.job:q}} --input {named('input', input)}"
        f" --output {named('output', output)} --wildcards {named('wildcards', wildcards)}"
        " --log {log:q} --threads {threads} --resources mem_mb={resources.mem_mb} runtime={resources.runtime}"
        f" --scripts {shlex.quote(str(scripts)).replace('{', '{{').replace('}', '}}')}"
    )


def command_names(cmd: str) -> dict[str, set[str]]:
    """The input, output and wildcard names a :func:`job_command` passes on (to check against its rule)."""
    names: dict[str, set[str]] = {"input": set(), "output": set(), "wildcards": set()}
    for name, kind in re.findall(r"(\w+)=\{(input|output|wildcards)\.\1:q\}", cmd):
        names[kind].add(name)
    return names


def _named(items: list[str], what: str) -> dict[str, str]:
    """NAME=VALUE words as a dict; an empty VALUE (an optional input not given) is left out."""
    out = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name.isidentifier():
            sys.exit(f"ERROR kneeflow.job: {what} {item!r} is not NAME=VALUE")
        if value:
            out[name] = value
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m kneeflow.job", description=__doc__.splitlines()[0])
    ap.add_argument("spec", help="the rule's `job` parameter (JSON)")
    ap.add_argument("--input", nargs="*", default=[], metavar="NAME=PATH")
    ap.add_argument("--output", nargs="*", default=[], metavar="NAME=PATH")
    ap.add_argument("--wildcards", nargs="*", default=[], metavar="NAME=VALUE")
    ap.add_argument("--scripts", required=True, help="the workflow's scripts/ folder")
    ap.add_argument("--log", nargs="*", default=[])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resources", nargs="*", default=[], metavar="KEY=VALUE")
    a = ap.parse_args(argv)
    spec = {**json.loads(a.spec), "input": _named(a.input, "input"), "output": _named(a.output, "output"),
            "wildcards": _named(a.wildcards, "wildcard")}
    rule = spec["rule"]
    script = Path(a.scripts) / f"{rule}.py"
    if script_sha256(script) != spec["script_sha256"]:
        # the graph was planned with other code than the one about to run (edited mid-run)
        sys.exit(f"ERROR {rule}: {script} changed since the workflow was planned; run it again")
    resources = {}
    for kv in a.resources:
        k, _, v = kv.partition("=")
        resources[k] = int(v) if v.lstrip("-").isdigit() else v
    job = Job(rule, spec, a.log, a.threads, resources)
    runpy.run_path(str(script), init_globals={"snakemake": job}, run_name="__main__")


if __name__ == "__main__":
    main()
