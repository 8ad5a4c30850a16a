"""Segmentation metrics in one place: Dice per label, and Dice with the average symmetric surface
distance (ASSD, mm) per structure.

ASSD is MONAI's ``compute_average_surface_distance(symmetric=True)`` with the voxel spacing: the mean
of the distances from every boundary voxel of each mask to the other mask's boundary (boundary = mask
minus its erosion). ``benchmarks/metrics.py`` compares it with the same maths written on scipy.
"""

from __future__ import annotations

__all__ = ["assd", "dice", "dice_assd"]

import numpy as np


def dice(pred: np.ndarray, ref: np.ndarray, labels) -> dict[int, float]:
    """Dice per label value (NaN where the label is in neither map)."""
    out = {}
    for c in labels:
        a, b = pred == c, ref == c
        s = int(a.sum() + b.sum())
        out[int(c)] = float(2 * (a & b).sum() / s) if s else float("nan")
    return out


def assd(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """Average symmetric surface distance (in the units of ``spacing``) between two masks (MONAI);
    NaN when either is empty."""
    if not (a.any() and b.any()):
        return float("nan")
    import torch
    from monai.metrics import compute_average_surface_distance

    def t(m):
        return torch.as_tensor(np.ascontiguousarray(m, dtype=bool))[None, None]

    d = compute_average_surface_distance(t(a), t(b), include_background=True, symmetric=True,
                                         spacing=[float(s) for s in spacing])
    return float(d.reshape(-1)[0])


def dice_assd(pred: np.ndarray, ref: np.ndarray, spacing_zyx, labels: dict[str, int]) -> list[dict]:
    """Dice and ASSD (mm) per structure of ``labels`` ({name: value}); ``spacing_zyx`` in array order."""
    d = dice(pred, ref, labels.values())
    return [{"structure": name, "dice": d[int(c)], "assd_mm": assd(pred == c, ref == c, spacing_zyx)}
            for name, c in labels.items()]
