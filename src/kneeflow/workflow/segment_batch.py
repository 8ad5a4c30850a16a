"""The segmentation batch job's loop, shared by every back end's script: one loaded model, many scans.

Each scan of the batch is read and segmented into the batch's staging folder (written whole or not at
all); a scan that cannot be read or segmented is recorded in ``manifest.json`` and the job goes on with
the next, so one bad scan never costs the others their labels (``kneeflow segment collect`` then
fails that scan's own job with the batch's message).
"""

from __future__ import annotations

__all__ = ["run_batch"]

import logging
from collections.abc import Callable
from pathlib import Path

from kneeflow import io
from kneeflow.atomic import atomic_path
from kneeflow.workflow.rule import one_line


def run_batch(sm, load: Callable) -> dict:
    """Segment each scan of the batch into the staging folder with ``load(sm) -> (segmenter,
    {weights file: sha256})``; per-scan failures go to manifest.json. Returns the weights."""
    log = logging.getLogger("segment")
    staging = Path(sm.output.staging)
    with atomic_path(staging) as tmp:  # the batch's folder appears whole or not at all
        tmp.mkdir()
        seg, weights = load(sm)
        manifest = {"weights_sha256": weights, "samples": {}}
        read_errors = predict_errors = 0
        # models trained here see left and right knees as one (flip augmentation): medial/lateral comes
        # from the sheet's side and the tibial midline unless the model entry says `medial_lateral: model`
        medial_lateral = dict(sm.params.entry).get("medial_lateral") or getattr(seg, "meta", {}).get("medial_lateral", "model")
        log.info("medial/lateral labels: %s", "from the knee's side" if medial_lateral == "side" else "as the model predicts")
        # cartilage/background boundaries moved to the image's edge (kneeflow.postprocess.refine_cartilage_edges)
        refine = dict(sm.params.entry).get("refine_edges", False)
        log.info("cartilage edge refinement: %s", "on" if refine else "off")
        for sample, scan_path, side in zip(sm.params.samples, sm.input.scans, sm.params.sides):
            try:
                image = io.read_scan(scan_path).image
            except Exception as e:  # noqa: BLE001 - this scan's own problem; its ingest job reports it too
                read_errors += 1
                manifest["samples"][sample] = {"scan": str(scan_path), "error": one_line(e)}
                log.error("skipping %s: %s", sample, one_line(e))
                continue
            log.info("segmenting %s (%s)", sample, scan_path)
            try:
                lab = seg.predict(image)  # in the model's layout, back on the scan's grid
                if refine:
                    lab = _refine_edges(image, lab, sample, refine)
                if medial_lateral == "side":
                    lab = _assign_medial_lateral(lab, side)
            except Exception as e:  # noqa: BLE001 - recorded for this scan; the batch goes on
                predict_errors += 1
                manifest["samples"][sample] = {"scan": str(scan_path), "error": f"{scan_path}: segmentation failed: {one_line(e)}"}
                log.exception("segmentation of %s failed", sample)
                continue
            io.write_image(lab, tmp / f"{sample}.nii.gz")
            manifest["samples"][sample] = {"scan": str(scan_path), "labels": f"{sample}.nii.gz"}
            # resident memory after each scan: a batched predictor must not grow (benchmarks/soak.py)
            with open("/proc/self/statm") as fh:
                rss_mb = int(fh.read().split()[1]) * 4096 / 2**20
            log.info("done %s rss_mb=%.1f", sample, rss_mb)
        if predict_errors and predict_errors + read_errors == len(sm.params.samples):
            # no scan of the batch could be segmented: the model, not the scans, is the likely problem
            raise RuntimeError(f"the model failed on every readable scan of this batch ({predict_errors}); "
                               f"first: {next(v['error'] for v in manifest['samples'].values() if 'error' in v)}")
        io.write_json(manifest, tmp / "manifest.json")
    return weights


def _refine_edges(image, lab, sample, options):
    import SimpleITK as sitk

    from kneeflow.postprocess import refine_cartilage_edges

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"refine_edges needs a one-component scan, got {image.GetNumberOfComponentsPerPixel()} components")
    kw = options if isinstance(options, dict) else {}
    arr, stats = refine_cartilage_edges(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(lab), image.GetSpacing(), **kw)
    logging.getLogger("segment").info("%s: cartilage edges refined: %d voxels joined a plate, %d left one (noise %.1f)",
                                      sample, stats["grown"], stats["shrunk"], stats["noise"])
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(lab)
    return out


def _assign_medial_lateral(lab, side):
    import SimpleITK as sitk

    from kneeflow.postprocess import assign_medial_lateral

    if side not in ("left", "right"):
        raise ValueError(f"the sheet gives no side ({side!r}) to assign medial/lateral labels; "
                         "add it, or set `medial_lateral: model` for this model")
    out = sitk.GetImageFromArray(assign_medial_lateral(sitk.GetArrayFromImage(lab), lab, side))
    out.CopyInformation(lab)
    return out
