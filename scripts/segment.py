"""Segment a batch of scans with one loaded model (load once, predict many).

Back ends: our checkpoints (`train`), nnU-Net v2 model folders (`nnunet`: local or Hugging Face,
lowres -> cascade), exported ONNX models (`onnx`). DOSMA's Keras models run in their own environment
(scripts/segment_dosma.py). The loop over the batch's scans: kneeflow.workflow.segment_batch.
"""

import logging

from kneeflow import models
from kneeflow.orientation import DOSMA_SAGITTAL, parse_layout
from kneeflow.workflow.rule import run
from kneeflow.workflow.segment_batch import run_batch


def load(sm):
    """The entry's segmenter, loaded once, and {weights file: sha256}.

    An entry may set ``layout`` (the orientation code scans are put in; ours: recorded in the
    checkpoint or the ONNX metadata; nnU-Net: DOSMA's sagittal ``RIP``), ``mirror`` (test-time
    mirroring; ours: the segmentation section's ``mirror``; nnU-Net: off, as published) and ``clean``
    (kneeflow.postprocess: ``attached`` for ours, ``largest`` for nnU-Net as published).
    """
    backend, entry = sm.params.backend, dict(sm.params.entry)
    device = models.resolve_device(sm.params.device)
    if device == "cpu":  # torch would take every core; the job was given sm.threads
        import torch

        torch.set_num_threads(max(1, int(sm.threads)))
    clean = entry.get("clean", "largest" if backend == "nnunet" else "attached")
    mirror = entry.get("mirror", sm.params.mirror if backend != "nnunet" else False)
    if backend in ("train", "onnx"):
        from kneeflow.inference import Segmenter, onnx_segmenter

        if backend == "train":
            ck = sm.input.model[0]
            seg, weights = Segmenter.from_checkpoint(ck, device=device, mirror=mirror, clean=clean), \
                {ck: models.file_sha256(ck)}
        else:
            f = entry["onnx"]["file"]
            sha = entry["onnx"].get("sha256")
            got = models.file_sha256(f)
            if sha and got != sha.lower():
                raise models.CheckpointError(f"{f}: sha256 mismatch: expected {sha}, got {got}")
            seg, weights = onnx_segmenter(f, device=device, mirror=mirror, clean=clean), {f: got}
        if "layout" in entry:  # the entry's choice, `null` included (as stored)
            seg.meta["layout"] = parse_layout(entry["layout"])
        if not seg.meta.get("layout"):
            logging.getLogger("segment").warning(
                "the model records no training layout: scans are segmented in the layout their files store "
                "(set `layout` in the model entry)")
        return seg, weights
    from kneeflow import nnunet

    e = dict(entry["nnunet"])
    folder = nnunet.fetch(e)
    seg = nnunet.NnunetSegmenter(folder, e.get("folds"), e.get("checkpoint"), device=device, mirror=mirror,
                                 previous_stage=e.get("previous_stage"), clean=clean,
                                 layout=parse_layout(entry.get("layout", DOSMA_SAGITTAL)))
    return seg, {str(p): models.file_sha256(p) for p in seg.weights()}


run(snakemake, lambda sm: run_batch(sm, load))  # noqa: F821
