"""Quality control of an ingested scan: what ``qc.json`` holds (geometry, layout, intensities,
echoes, warnings), and the ingest step that writes the checked image with it."""

from __future__ import annotations

__all__ = ["ingest", "qc_record"]

import os
from pathlib import Path

import numpy as np

from kneeflow.io import InputError, Scan, echoes_sidecar, read_scan, write_image, write_json
from kneeflow.orientation import layout_of


def qc_record(scan: Scan) -> dict:
    """Geometry, intensity and echo summary of a scan (what qc.json holds)."""
    import SimpleITK as sitk

    arr = sitk.GetArrayViewFromImage(scan.image)
    pct = np.percentile(arr, [1, 5, 50, 95, 99]).tolist()
    rec = {
        "source": scan.source,
        "size": list(scan.image.GetSize()),
        "spacing_mm": [round(float(s), 6) for s in scan.image.GetSpacing()],
        "origin_mm": [round(float(s), 4) for s in scan.image.GetOrigin()],
        "direction": [round(float(s), 6) for s in scan.image.GetDirection()],
        "orientation": layout_of(scan.image),
        "intensity_percentiles": dict(zip(["p1", "p5", "p50", "p95", "p99"], [round(float(x), 4) for x in pct])),
        "echo_times_ms": [round(t, 4) for t in scan.echo_times_ms],
        "n_echoes": len(scan.echo_times_ms) if scan.echoes is not None else (1 if scan.echo_times_ms else 0),
        "series": scan.series,
        "warnings": list(scan.warnings),
    }
    if scan.echoes is not None:
        rec["echo_size"] = list(scan.echoes.GetSize())
        rec["echo_spacing_mm"] = [round(float(s), 6) for s in scan.echoes.GetSpacing()]
    return rec


def ingest(image: str | os.PathLike, out_image: str | os.PathLike, out_qc: str | os.PathLike,
           echoes: str | os.PathLike | None = None, out_echoes: str | os.PathLike | None = None) -> dict:
    """Ingest one sample: checked image.nii.gz (+ echoes.nii.gz + .json) and qc.json."""
    scan = read_scan(image, echoes)
    if out_echoes is not None and scan.echoes is None:
        raise InputError(image, "the sample is marked multi-echo (sequence mese or an `echoes` column) but only one echo was found")
    write_image(scan.image, out_image)
    if out_echoes is not None:
        write_image(scan.echoes, out_echoes)
        write_json({"echo_times_ms": scan.echo_times_ms}, echoes_sidecar(Path(out_echoes)))
    rec = qc_record(scan)
    write_json(rec, out_qc)
    return rec
