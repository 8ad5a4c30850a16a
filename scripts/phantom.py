"""Synthesise one demo knee (image, labels, MESE echoes, truth.json)."""

from pathlib import Path

from kneeflow import phantom
from kneeflow.rule import run


def main(sm):
    p = sm.params
    ph = phantom.synthesize(int(p.seed), p.side, float(p.oa), spacing=float(p.spacing), mese=True)
    phantom.write(ph, Path(sm.output.image).parent)


run(snakemake, main)  # noqa: F821
