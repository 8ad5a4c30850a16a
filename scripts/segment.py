"""Segment a batch of scans with one loaded model (load once, predict many)."""

import logging

from kneeflow import io, models
from kneeflow.inference import Segmenter
from kneeflow.rule import run


def main(sm):
    seg = Segmenter.from_checkpoint(sm.input.checkpoint, device=models.resolve_device(sm.params.device),
                                    mirror=sm.params.mirror)
    for img_path, nii, nrrd in zip(sm.input.images, sm.output.nii, sm.output.nrrd):
        logging.getLogger("segment").info("segmenting %s", img_path)
        lab = seg.predict(io.read_volume(img_path))
        io.write_image(lab, nii)
        io.write_image(lab, nrrd)
        # resident memory after each scan: a batched predictor must not grow (benchmarks/soak.py)
        with open("/proc/self/statm") as fh:
            rss_mb = int(fh.read().split()[1]) * 4096 / 2**20
        logging.getLogger("segment").info("done %s rss_mb=%.1f", img_path, rss_mb)
    return {str(sm.input.checkpoint): models.file_sha256(sm.input.checkpoint)}


run(snakemake, main)  # noqa: F821
