"""Ingest a scan: checked image.nii.gz, qc.json (and echoes when the sample has them)."""

from kneeflow import io
from kneeflow.rule import run


def main(sm):
    rec = io.ingest(sm.input.image, sm.output.image, sm.output.qc)
    for w in rec["warnings"]:
        import logging

        logging.getLogger("ingest").warning("%s: %s", sm.input.image, w)


run(snakemake, main)  # noqa: F821
