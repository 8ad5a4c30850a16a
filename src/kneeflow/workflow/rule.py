"""Helpers for the thin rule scripts: logging to the rule's log, one-line errors."""

from __future__ import annotations

__all__ = ["export_src_path", "one_line", "run"]

import logging
import sys
import traceback
from collections.abc import Callable


def run(snakemake, main: Callable[[object], None]) -> None:
    """Run ``main(snakemake)`` with logging routed to ``snakemake.log[0]``.

    After success each output gets a provenance sidecar ``<output>.prov.json`` (see
    :mod:`kneeflow.workflow.provenance`); ``main`` may return {weights file: sha256} to record, or a
    tuple (that dict, extra record fields).

    On failure the log and stderr get one line ``ERROR <rule> <wildcards>: <message>`` (the message
    names the file and the problem), the traceback follows in the log only, and the job exits 1, so
    Snakemake deletes the job's outputs and ``--keep-going`` carries on with the other samples.
    """
    log_path = snakemake.log[0] if len(snakemake.log) else None
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)
    for noisy in ("numexpr", "pyacvd", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    wc = ",".join(f"{k}={v}" for k, v in dict(snakemake.wildcards).items())
    try:
        ret = main(snakemake)
        # main returns nothing, {weights file: sha256}, or (weights, extra fields of the record)
        weights, extra = ret if isinstance(ret, tuple) else (ret, {})
        from kneeflow.workflow import provenance

        rec = provenance.record(snakemake.rule, dict(snakemake.wildcards.items()), list(snakemake.input),
                                dict(snakemake.params.items()), weights if isinstance(weights, dict) else None)
        rec.update(extra)
        # what the job was given (memory and runtime grow with the attempt; gpu, partition on SLURM)
        rec["resources"] = {k: v for k, v in snakemake.resources.items() if isinstance(v, (int, float, str))}
        provenance.write_sidecars(rec, list(snakemake.output))
    except Exception as e:  # noqa: BLE001 - reported in one line, then the job fails
        line = f"ERROR {snakemake.rule} {wc}: {one_line(e)}"
        if log_path:
            with open(log_path, "a") as fh:
                fh.write(line + "\n" + traceback.format_exc())
        print(line, file=sys.stderr, flush=True)
        sys.exit(1)


def one_line(e: BaseException) -> str:
    """An exception's message as one line (first line, whitespace collapsed)."""
    return " ".join(str(e).split("\n")[0].split())


def export_src_path(src: str) -> None:
    """Put the library's folder on PYTHONPATH for every job the workflow starts (local or cluster),
    and this interpreter's folder first on PATH, so that the ``python`` of a ``shell:`` job is the one
    running Snakemake (as for ``script:``); a job's conda env, when used, is activated in front of it.
    The workflow's ``bin/`` (the ``kneeflow`` command) goes in front of both."""
    import os

    def prepend(var: str, first: str) -> None:
        parts = [first] + [p for p in os.environ.get(var, "").split(os.pathsep) if p and p != first]
        os.environ[var] = os.pathsep.join(parts)

    prepend("PYTHONPATH", src)
    prepend("PATH", os.path.dirname(sys.executable))
    # the `kneeflow` command of the per-sample rules: bin/kneeflow runs `python -m kneeflow` with the
    # first python on PATH (this one, or a job's conda env's), so no env needs kneeflow installed
    prepend("PATH", os.path.join(os.path.dirname(os.path.abspath(src)), "bin"))
