"""Segment a batch of scans with one loaded model (load once, predict many).

Back ends: our checkpoints (`train`), nnU-Net v2 model folders (`nnunet`: local or Hugging Face,
lowres -> cascade), exported ONNX models (`onnx`).
"""

import logging

from kneeflow import io, models
from kneeflow.rule import run


def load(sm, device):
    backend, entry = sm.params.backend, dict(sm.params.entry)
    if backend == "train":
        from kneeflow.inference import Segmenter

        ck = sm.input.model[0]
        return Segmenter.from_checkpoint(ck, device=device, mirror=sm.params.mirror), {ck: models.file_sha256(ck)}
    if backend == "onnx":
        from kneeflow.inference import onnx_segmenter

        f = entry["onnx"]["file"]
        sha = entry["onnx"].get("sha256")
        got = models.file_sha256(f)
        if sha and got != sha.lower():
            raise models.CheckpointError(f"{f}: sha256 mismatch: expected {sha}, got {got}")
        return onnx_segmenter(f, device=device, mirror=sm.params.mirror), {f: got}
    from kneeflow import nnunet

    e = dict(entry["nnunet"])
    folder = nnunet.fetch(e)
    seg = nnunet.NnunetSegmenter(folder, e.get("folds"), e.get("checkpoint", "checkpoint_final.pth"), device=device,
                                 mirror=sm.params.mirror, previous_stage=e.get("previous_stage"))
    weights = {str(p): models.file_sha256(p) for p in sorted(folder.glob("fold_*/" + e.get("checkpoint", "checkpoint_final.pth")))}
    return seg, weights


def main(sm):
    seg, weights = load(sm, models.resolve_device(sm.params.device))
    for img_path, nii, nrrd in zip(sm.input.images, sm.output.nii, sm.output.nrrd):
        logging.getLogger("segment").info("segmenting %s", img_path)
        lab = seg.predict(io.read_volume(img_path))
        io.write_image(lab, nii)
        io.write_image(lab, nrrd)
        # resident memory after each scan: a batched predictor must not grow (benchmarks/soak.py)
        with open("/proc/self/statm") as fh:
            rss_mb = int(fh.read().split()[1]) * 4096 / 2**20
        logging.getLogger("segment").info("done %s rss_mb=%.1f", img_path, rss_mb)
    return weights


run(snakemake, main)  # noqa: F821
