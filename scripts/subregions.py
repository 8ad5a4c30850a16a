"""Split femoral cartilage into the reference pipeline's five subregions (labels 11-15)."""

from kneeflow import io
from kneeflow.rule import run
from kneeflow.subregions import femoral_subregions


def main(sm):
    labels = io.read_volume(sm.input.labels, what="label map")
    out = femoral_subregions(labels, sm.params.reference or None, shrink=sm.params.shrink)
    io.write_image(out, sm.output.labels)


run(snakemake, main)  # noqa: F821
