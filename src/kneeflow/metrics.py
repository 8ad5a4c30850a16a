"""Segmentation metrics: Dice and average symmetric surface distance per structure."""

from __future__ import annotations

__all__ = ["dice_assd"]

import numpy as np


def dice_assd(pred: np.ndarray, ref: np.ndarray, spacing_zyx, labels: dict[str, int]) -> list[dict]:
    """Dice and average symmetric surface distance (mm) per structure."""
    from scipy import ndimage

    rows = []
    for name, c in labels.items():
        a, b = pred == c, ref == c
        s = int(a.sum() + b.sum())
        dice = float(2 * (a & b).sum() / s) if s else float("nan")
        if a.any() and b.any():
            sa = a & ~ndimage.binary_erosion(a)
            sb = b & ~ndimage.binary_erosion(b)
            da = ndimage.distance_transform_edt(~sb, sampling=spacing_zyx)[sa]
            db = ndimage.distance_transform_edt(~sa, sampling=spacing_zyx)[sb]
            assd = float((da.sum() + db.sum()) / (len(da) + len(db)))
        else:
            assd = float("nan")
        rows.append({"structure": name, "dice": dice, "assd_mm": assd})
    return rows
