"""Ingest a multi-echo series: echoes.nii.gz (one component per echo) + echoes.json (echo times)."""

import json

from kneeflow import io
from kneeflow.rule import run


def main(sm):
    img, tes = io.read_echoes(sm.input.echoes)
    io.write_image(img, sm.output.echoes)
    io.write_json({"echo_times_ms": tes, "source": str(sm.input.echoes)}, sm.output.times)
    with open(sm.log[0], "a") as fh:
        fh.write(json.dumps({"echo_times_ms": tes}) + "\n")


run(snakemake, main)  # noqa: F821
