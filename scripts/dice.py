"""Dice and ASSD of each model's segmentation against the reference labels."""

from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from kneeflow import io
from kneeflow.inference import dice_assd
from kneeflow.labels import CANONICAL
from kneeflow.rule import run


def main(sm):
    rows = []
    for sample, pred_p, ref_p in zip(sm.params.samples, sm.input.pred, sm.input.ref):
        pred = io.read_volume(pred_p, what="label map")
        ref = io.load_label_map(ref_p, CANONICAL, reference=pred)
        sp = pred.GetSpacing()[::-1]
        for r in dice_assd(sitk.GetArrayFromImage(pred), sitk.GetArrayFromImage(ref), sp, CANONICAL):
            rows.append({"sample": sample, "model": sm.params.model, **r})
    tmp = Path(sm.output.table).with_suffix(".part")
    pd.DataFrame(rows).to_csv(tmp, index=False, float_format="%.6g")
    tmp.replace(sm.output.table)


run(snakemake, main)  # noqa: F821
