"""Figure: wall time per rule from Snakemake's benchmark files (where the time goes)."""

from pathlib import Path

import pandas as pd

from kneeflow import figures
from kneeflow.workflow.rule import run


def main(sm):
    frames = []
    for f in sorted(Path(sm.params.bench_dir).glob("*/*.tsv")):
        b = pd.read_csv(f, sep="\t")
        b["rule"], b["job"] = f.parent.name, f.stem
        frames.append(b)
    bench = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    figures.runtime_per_rule(bench, sm.output.png)


run(snakemake, main)  # noqa: F821
