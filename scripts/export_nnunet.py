"""Export an nnU-Net v2 network (plans file; trained weights when a results folder is given)."""

from pathlib import Path

from kneeflow import export
from kneeflow.workflow.rule import run


def main(sm):
    cfg = dict(sm.params.net)
    rec = export.export_nnunet(cfg, Path(sm.output.parity).parent, sm.wildcards.net)
    export.require_parity(rec, "onnx", float(sm.params.onnx_atol), float(sm.params.onnx_rtol))


run(snakemake, main)  # noqa: F821
