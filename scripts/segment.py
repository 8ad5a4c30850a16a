"""Segment a batch of scans with one loaded model (load once, predict many).

Back ends: our checkpoints (`train`), nnU-Net v2 model folders (`nnunet`: local or Hugging Face,
lowres -> cascade), exported ONNX models (`onnx`).
"""

import logging
from pathlib import Path

from kneeflow import io, models
from kneeflow.atomic import atomic_path
from kneeflow.rule import one_line, run


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
    """Segment each scan of the batch into the staging folder; per-scan failures go to manifest.json."""
    log = logging.getLogger("segment")
    staging = Path(sm.output.staging)
    with atomic_path(staging) as tmp:  # the batch's folder appears whole or not at all
        tmp.mkdir()
        seg, weights = load(sm, models.resolve_device(sm.params.device))
        manifest = {"weights_sha256": weights, "samples": {}}
        read_errors = predict_errors = 0
        # models trained here see left and right knees as one (flip augmentation): medial/lateral comes
        # from the sheet's side and the tibial midline unless the model entry says `medial_lateral: model`
        medial_lateral = dict(sm.params.entry).get("medial_lateral") or getattr(seg, "meta", {}).get("medial_lateral", "model")
        log.info("medial/lateral labels: %s", "from the knee's side" if medial_lateral == "side" else "as the model predicts")
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
                lab = seg.predict(image)
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


def _assign_medial_lateral(lab, side):
    import SimpleITK as sitk

    from kneeflow.inference import assign_medial_lateral

    if side not in ("left", "right"):
        raise ValueError(f"the sheet gives no side ({side!r}) to assign medial/lateral labels; "
                         "add it, or set `medial_lateral: model` for this model")
    out = sitk.GetImageFromArray(assign_medial_lateral(sitk.GetArrayFromImage(lab), lab, side))
    out.CopyInformation(lab)
    return out


run(snakemake, main)  # noqa: F821
