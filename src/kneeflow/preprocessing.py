"""Preprocessing shared by training and inference: reading a case (in a model's layout, see
:mod:`kneeflow.orientation`), resampling, intensity normalisation."""

from __future__ import annotations

__all__ = ["normalise", "read_case", "resample_to_spacing"]

import numpy as np

from kneeflow.orientation import reorient


def read_case(image: str, labels: str | None, spacing=None, layout: str | None = None):
    """Image (z-scored float32) and labels (uint8) as (z, y, x) arrays, in ``layout`` when given,
    resampled to ``spacing``."""
    import SimpleITK as sitk

    from kneeflow import io

    img = sitk.Cast(io.read_volume(image), sitk.sitkFloat32)
    lab = io.read_volume(labels, what="label map") if labels else None
    if layout:
        img = reorient(img, layout)
        lab = reorient(lab, layout) if lab is not None else None
    if spacing is not None:
        img = resample_to_spacing(img, spacing, sitk.sitkLinear)
        if lab is not None:
            lab = sitk.Resample(lab, img, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    arr = normalise(sitk.GetArrayFromImage(img))
    return arr, (sitk.GetArrayFromImage(lab).astype(np.uint8) if lab is not None else None), img


def resample_to_spacing(img, spacing, interp):
    import SimpleITK as sitk

    sp = np.asarray(img.GetSpacing(), float)
    new = np.asarray(spacing, float)
    size = np.maximum(np.round(np.asarray(img.GetSize()) * sp / new).astype(int), 1)
    return sitk.Resample(img, [int(s) for s in size], sitk.Transform(), interp, img.GetOrigin(), tuple(new),
                         img.GetDirection(), 0.0, img.GetPixelID())


def normalise(arr: np.ndarray) -> np.ndarray:
    """z-score over the whole volume (nnU-Net's MRI scheme)."""
    arr = arr.astype(np.float32)
    return (arr - arr.mean()) / max(float(arr.std()), 1e-6)
