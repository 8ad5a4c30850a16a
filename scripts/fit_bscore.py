"""Fit the BScore model (public model.json layout) from the healthy and OA knees' latents."""

import json

from kneeflow import bscore as shape
from kneeflow.workflow.rule import run


def main(sm):
    latents = {s: json.load(open(f))["latent"] for s, f in zip(sm.params.samples, sm.input.fits)}
    groups = dict(zip(sm.params.samples, sm.params.groups))
    model = shape.fit_bscore(latents, groups)
    model["fitted_on"] = sorted(latents)
    shape.save_bscore_model(model, sm.output.model)


run(snakemake, main)  # noqa: F821
