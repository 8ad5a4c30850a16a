"""BScore from the models' segmentations beside the provided labels' -> results/tables/bscore_auto.csv."""

import json

import pandas as pd

from kneeflow import bscore as shape
from kneeflow.atomic import write_table
from kneeflow.workflow.rule import run


def main(sm):
    model = shape.load_bscore_model(sm.input.model)
    samples, models = list(sm.params.samples), list(sm.params.models)
    provided = list(sm.input.provided)
    auto = iter(sm.input.auto)  # models outer, samples inner (as the rule lists them)
    fits = [("provided", s, p) for s, p in zip(samples, provided)]
    fits += [(m, s, next(auto)) for m in models for s in samples]
    rows = []
    for labels, s, path in fits:
        fit = json.load(open(path))
        shape.check_pair(model, len(fit["latent"]), str(sm.input.model), f"the shape model of {path} ({fit.get('model')})")
        rows.append({"sample": s, "labels": labels, "bscore": shape.bscore(model, fit["latent"]),
                     "nsm_assd_mm": fit["assd_mm"], "fit": path})
    df = pd.DataFrame(rows)
    ref = df[df.labels == "provided"].set_index("sample").bscore
    df["bscore_diff"] = df.bscore - df["sample"].map(ref)
    write_table(df[["sample", "labels", "bscore", "bscore_diff", "nsm_assd_mm", "fit"]], sm.output.table)


run(snakemake, main)  # noqa: F821
