"""Dice and ASSD of each model's segmentation against the reference labels."""

import pandas as pd
import SimpleITK as sitk

from kneeflow import io
from kneeflow.atomic import write_table
from kneeflow.labels import CANONICAL
from kneeflow.metrics import dice_assd
from kneeflow.workflow.rule import run


def main(sm):
    rows = []
    for sample, pred_p, ref_p in zip(sm.params.samples, sm.input.pred, sm.input.ref):
        pred = io.read_volume(pred_p, what="label map")
        ref = io.load_label_map(ref_p, CANONICAL, reference=pred)
        sp = pred.GetSpacing()[::-1]
        for r in dice_assd(sitk.GetArrayFromImage(pred), sitk.GetArrayFromImage(ref), sp, CANONICAL):
            rows.append({"sample": sample, "model": sm.params.model, **r})
    write_table(pd.DataFrame(rows), sm.output.table)


run(snakemake, main)  # noqa: F821
