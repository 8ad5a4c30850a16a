"""BScore of every fitted knee -> results/<sample>/shape/bscore.json and results/tables/bscore.csv."""

import json

import pandas as pd

from kneeflow import bscore as shape
from kneeflow.atomic import atomic_path, write_table
from kneeflow.workflow.rule import run


def main(sm):
    model = shape.load_bscore_model(sm.input.model)
    meta = pd.DataFrame(dict(sm.params.meta)).set_index("sample")
    fit_ids = set(sm.params.fit_ids)
    rows = []
    for s, f, out in zip(sm.params.samples, sm.input.fits, sm.output.scores):
        fit = json.load(open(f))
        shape.check_pair(model, len(fit["latent"]), str(sm.input.model), f"the shape model of {f} ({fit.get('model')})")
        b = shape.bscore(model, fit["latent"])
        rec = {"sample": s, "bscore": b, "model": str(sm.input.model), "assd_mm": fit["assd_mm"],
               "used_to_fit_bscore": s in fit_ids}
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(rec, indent=1) + "\n")
        m = meta.loc[s]
        rows.append({"sample": s, "group": m["group"], "kl_grade": m["kl_grade"], "oa_severity": m["oa_severity"],
                     "side": m["side"], "bscore": b, "nsm_assd_mm": fit["assd_mm"], "used_to_fit_bscore": s in fit_ids})
    write_table(pd.DataFrame(rows), sm.output.table)


run(snakemake, main)  # noqa: F821
