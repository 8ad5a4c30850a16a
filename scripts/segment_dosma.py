"""Segment a batch of scans with DOSMA's Keras model(s) (one plane, or three fused by STAPLE), loaded
once; runs in envs/dosma.yaml (TensorFlow + the Keras 2 API, no torch)."""

from kneeflow.checksum import sha256
from kneeflow.dosma import DosmaSegmenter, parse_entry
from kneeflow.workflow.rule import run
from kneeflow.workflow.segment_batch import run_batch


def load(sm):
    models, fuse = parse_entry(dict(sm.params.entry))
    weights = {f: sha256(f) for f, _ in models}
    return DosmaSegmenter(models, fuse), weights


run(snakemake, lambda sm: run_batch(sm, load))  # noqa: F821
