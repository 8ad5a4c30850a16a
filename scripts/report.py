"""The study report: results/report/index.html and results/report/knees/<sample>.html."""

import datetime
import json
from pathlib import Path

import pandas as pd

from kneeflow import report
from kneeflow.checksum import sha256
from kneeflow.workflow.rule import run


def caption(png):
    rst = Path(__file__).resolve().parents[1] / "report" / f"fig_{Path(png).stem}.rst"
    if not rst.exists():  # figures whose caption file is named differently (fig_dice -> dice.png)
        rst = next(iter(sorted(rst.parent.glob(f"fig_{Path(png).stem.split('_')[0]}*.rst"))), rst)
    return " ".join(rst.read_text().split()) if rst.exists() else ""


def main(sm):
    meta = pd.DataFrame(sm.params.meta)
    meta["split"] = list(sm.params.split)
    prov = pd.read_csv(sm.input.provenance, sep="\t")
    weights = {}
    for w in prov.get("weights_sha256", pd.Series(dtype=str)).dropna():
        weights.update(json.loads(w) if isinstance(w, str) and w.startswith("{") else {})
    # the weights this study ran: trained checkpoints and exports (sha256), plus any the provenance records
    for pattern in ("results/models/*/checkpoint.pt", "results/models/*/model.pth", "results/export/*/*.onnx"):
        for p in sorted(Path(".").glob(pattern)):
            weights[str(p)] = sha256(p)
    first = prov.iloc[0] if len(prov) else {}
    run_info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "kneeflow": first.get("kneeflow", ""),
        "git commit": f"{first.get('git_commit', '')}{' (uncommitted changes)' if first.get('git_dirty') else ''}",
        "stages": ", ".join(f"{k} {'on' if v else 'off'}" for k, v in sm.params.stages.items()),
        "models": ", ".join(sm.params.models) or "none",
        "weights sha256": "; ".join(f"{k}: {v[:16]}..." for k, v in sorted(weights.items())) or "none",
        "packages": first.get("packages", ""),
    }
    tables = {Path(t).stem: t for t in sm.input.tables}
    figures = [(Path(p).stem.replace("_", " "), p, caption(p)) for p in sm.input.figures]
    out = Path(sm.output.index).parent
    report.build_report(out, samples=list(sm.params.samples), meta=meta, results="results", tables=tables,
                        parity=list(sm.input.parity), run_info=run_info, figures=figures, log_dir="results/logs",
                        max_triangles=int(sm.params.max_triangles), stages=dict(sm.params.stages),
                        settings=dict(sm.params.settings))


run(snakemake, main)  # noqa: F821
