"""Export a workflow-trained checkpoint to ONNX and CoreML (fp32, fp16) with measured parity."""

from pathlib import Path

from kneeflow import export, models
from kneeflow.workflow.rule import run


def main(sm):
    net, meta = models.load_model(sm.input.checkpoint)
    name = sm.wildcards.model
    size = tuple(int(s) for s in meta.get("patch_size", (32, 32, 32)))
    rec = export.export_segmentation(net, meta, Path(sm.output.parity).parent, name, size=size)
    export.require_parity(rec, "onnx", float(sm.params.onnx_atol), float(sm.params.onnx_rtol))
    return {str(sm.input.checkpoint): models.file_sha256(sm.input.checkpoint)}


run(snakemake, main)  # noqa: F821
