"""Thickness from the models' segmentations beside the provided labels' (and the phantoms' truth)."""

import json

import numpy as np
import pandas as pd

from kneeflow.atomic import write_table
from kneeflow.workflow.rule import run

PLATES = ("femoral_cartilage", "medial_tibial_cartilage", "lateral_tibial_cartilage", "patellar_cartilage")


def main(sm):
    samples, models = list(sm.params.samples), list(sm.params.models)
    frames = [pd.read_csv(p).assign(labels="provided") for p in sm.input.provided]
    auto = iter(sm.input.auto)  # models outer, samples inner (as the rule lists them)
    for m in models:
        for _ in samples:
            frames.append(pd.read_csv(next(auto)).assign(labels=m))
    df = pd.concat(frames, ignore_index=True)
    df["truth_mm"] = np.nan
    for s, path in zip(samples, sm.input.truth):
        truth = json.load(open(path))["thickness_mm"]
        for plate in PLATES:
            sel = (df["sample"] == s) & (df.region == plate) & (df.stat == "mean")
            df.loc[sel, "truth_mm"] = truth[plate]
    df["error_mm"] = df.value_mm - df.truth_mm
    cols = ["sample", "labels", "bone", "region", "stat", "value_mm", "truth_mm", "error_mm"]
    write_table(df[cols].sort_values(["sample", "labels", "bone", "region", "stat"]), sm.output.table)


run(snakemake, main)  # noqa: F821
