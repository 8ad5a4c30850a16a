"""Bring an existing label map into the workflow: check geometry, remap to canonical, write .nii.gz."""

from kneeflow import io
from kneeflow.labels import get_convention
from kneeflow.rule import run


def main(sm):
    ref = io.read_volume(sm.input.image) if sm.input.get("image") else None
    conv = get_convention(sm.params.convention, sm.params.extra_conventions)
    lab = io.load_label_map(sm.input.labels, conv, reference=ref)
    io.write_image(lab, sm.output.nii)


run(snakemake, main)  # noqa: F821
