"""One row per sample from the qc.json files: geometry, intensity percentiles, echoes, warnings."""

import json
from pathlib import Path

import pandas as pd

from kneeflow.atomic import write_table
from kneeflow.workflow.rule import run


def main(sm):
    rows = []
    for sample, f in zip(sm.params.samples, sm.input.qc):
        q = json.loads(Path(f).read_text())
        rows.append({
            "sample": sample,
            "size": "x".join(map(str, q["size"])),
            "spacing_mm": "x".join(f"{s:.4g}" for s in q["spacing_mm"]),
            "orientation": q["orientation"],
            "n_echoes": q["n_echoes"],
            **{f"intensity_{k}": v for k, v in q["intensity_percentiles"].items()},
            "warnings": "; ".join(q["warnings"]),
        })
    write_table(pd.DataFrame(rows), sm.output.table, float_format=None)


run(snakemake, main)  # noqa: F821
