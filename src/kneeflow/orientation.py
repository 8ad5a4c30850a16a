"""Array layouts: which way a scan's axes run, and putting a scan in the layout a model expects.

Layouts are orientation codes in SimpleITK's (DICOM) convention: one letter per image axis (i, j, k,
i.e. x, y, z of the file; the SimpleITK array's axes reversed), naming the direction in which that
axis' index grows: ``"LPS"`` is an identity direction matrix; DOSMA's sagittal layout
("LR", "SI", "AP": index grows to the right, to inferior, to posterior) is ``"RIP"``. Reorienting
only permutes and flips axes (SimpleITK's ``DICOMOrient``, no interpolation), so it is exactly undone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["DOSMA_SAGITTAL", "CanonicalKnee", "canonical_knee", "check_layout", "knee_side", "dosma_layout", "layout_of", "mirror_left_right", "parse_layout",
           "predict_in_layout", "reorient"]

#: the public knee models' layout (DOSMA's ("LR", "SI", "AP")) as an orientation code
DOSMA_SAGITTAL = "RIP"
_TOWARDS = {"LR": "R", "RL": "L", "AP": "P", "PA": "A", "SI": "I", "IS": "S"}


def dosma_layout(axes) -> str:
    """DOSMA's orientation tuple (("LR", "SI", "AP"): from-to per axis) as an orientation code ("RIP")."""
    try:
        code = "".join(_TOWARDS[a.upper()] for a in axes)
    except (KeyError, AttributeError):
        raise ValueError(f"not a DOSMA orientation: {axes!r} (three of LR/RL, AP/PA, SI/IS)") from None
    check_layout(code)
    return code


def check_layout(code: str) -> str:
    """``code`` if it is a valid orientation code (one of L/R, one of A/P, one of S/I, in any order)."""
    groups = [{"L", "R"}, {"A", "P"}, {"S", "I"}]
    if not (isinstance(code, str) and len(code) == 3
            and all(sum(c.upper() in g for c in code) == 1 for g in groups)):
        raise ValueError(f"not an orientation code: {code!r} (e.g. 'LPS', 'RAS', 'RIP')")
    return code.upper()


def parse_layout(layout) -> str | None:
    """A config's layout: an orientation code ("RIP"), DOSMA's tuple (["LR", "SI", "AP"]), or
    null / "as_stored" (None: the scan as its file stores it)."""
    if layout is None or layout == "as_stored":
        return None
    return dosma_layout(layout) if isinstance(layout, (list, tuple)) else check_layout(layout)


def layout_of(image) -> str:
    """The orientation code nearest to ``image``'s direction matrix (oblique scans: the closest axes)."""
    import SimpleITK as sitk

    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def reorient(image, layout: str):
    """``image`` with its axes permuted and flipped into ``layout`` (the physical image unchanged)."""
    import SimpleITK as sitk

    return sitk.DICOMOrient(image, check_layout(layout))


def predict_in_layout(predict, image, layout: str | None):
    """Run ``predict`` (image -> label image on that image's grid) on ``image`` reoriented to
    ``layout``, and bring the labels back onto ``image``'s own grid (exactly: axes only)."""
    if not layout:
        return predict(image)
    own = layout_of(image)
    if own == check_layout(layout):
        return predict(image)
    lab = reorient(predict(reorient(image, layout)), own)
    if lab.GetSize() != image.GetSize():  # cannot happen for a permutation of axes; never write a shifted map
        raise RuntimeError(f"reorienting {own} -> {layout} -> {own} changed the grid {image.GetSize()} -> {lab.GetSize()}")
    lab.CopyInformation(image)  # the input's header exactly (an oblique direction survives the round trip)
    return lab


def mirror_left_right(image):
    """The physical mirror image of ``image`` through the patient's mid-sagittal plane (LPS x -> -x): a
    left knee becomes a right knee. The array is flipped along the axis nearest to x, so the direction
    matrix stays a rotation; applying it twice gives the original image and grid exactly."""
    import numpy as np
    import SimpleITK as sitk

    d = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    k = int(np.argmax(np.abs(d[0])))  # index axis (x, y, z of the file) nearest to physical x
    flip = np.eye(3)
    flip[k, k] = -1.0
    r = np.diag([-1.0, 1.0, 1.0])
    size = np.asarray(image.GetSize(), dtype=float)
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    origin = np.asarray(image.GetOrigin(), dtype=float)
    last = np.zeros(3)
    last[k] = (size[k] - 1) * spacing[k]
    arr = sitk.GetArrayFromImage(image)
    out = sitk.GetImageFromArray(np.ascontiguousarray(np.flip(arr, axis=2 - k)), isVector=image.GetNumberOfComponentsPerPixel() > 1)
    out.SetSpacing(tuple(spacing))
    out.SetDirection(tuple((r @ d @ flip).ravel()))
    out.SetOrigin(tuple(r @ (origin + d @ last)))
    return out


def knee_side(labels, *, medial: int = 3, lateral: int = 4, menisci: tuple[int, int] = (5, 6)) -> str | None:
    """Which knee a canonical label map shows, from its anatomy: the medial tibial plate (or meniscus)
    lies towards the patient's midline, so to the patient's left (+x, LPS) of the lateral one in a
    right knee. None where neither pair is in the map or they are not apart along x."""
    import SimpleITK as sitk

    arr = sitk.GetArrayViewFromImage(labels)
    for m, lat in ((medial, lateral), menisci):
        idx = [np.argwhere(arr == v) for v in (m, lat)]
        if any(len(i) == 0 for i in idx):
            continue
        c = [np.asarray(labels.TransformContinuousIndexToPhysicalPoint(i.mean(axis=0)[::-1].tolist())) for i in idx]
        d = c[0] - c[1]
        if abs(d[0]) > 0.5 * np.linalg.norm(d):
            return "right" if d[0] > 0 else "left"
    return None


@dataclass
class CanonicalKnee:
    """A knee label map re-indexed into one frame, so that a knee and its mirror image are measured
    on the same array: axes permuted and flipped to LPS (no interpolation), a left knee's array flipped
    along x into a right knee's, the header made the identity direction with origin 0.
    :meth:`to_original` brings images back exactly; ``kneeflow.mesh.transform(poly, matrix, offset)``
    brings meshes to the input's world."""

    image: object            # the canonical label map (SimpleITK)
    side: str | None         # the knee's side: its anatomy, else the declared side
    mirrored: bool           # a left knee, measured as its mirror image
    matrix: np.ndarray       # canonical physical point x -> world point matrix @ x + offset
    offset: np.ndarray
    original: object         # the input label map (its grid and header)
    lps: object              # the input reoriented to LPS (its grid and header)

    @property
    def canonical_side(self) -> str | None:
        """The side the canonical image shows: right for a knee of known side (left ones mirrored)."""
        return "right" if self.side else None

    def to_original(self, image):
        """An image on the canonical grid -> the same values on the input's grid and header."""
        import SimpleITK as sitk

        arr = sitk.GetArrayFromImage(image)
        if self.mirrored:
            arr = np.flip(arr, axis=2)
        out = sitk.GetImageFromArray(np.ascontiguousarray(arr))
        out.CopyInformation(self.lps)
        out = reorient(out, layout_of(self.original))
        if out.GetSize() != self.original.GetSize():
            raise RuntimeError(f"canonical -> original changed the grid {self.original.GetSize()} -> {out.GetSize()}")
        out.CopyInformation(self.original)
        return out


def canonical_knee(labels, side: str | None = None, *, source: str = "") -> CanonicalKnee:
    """``labels`` (canonical label values) in the canonical frame of :class:`CanonicalKnee`. The side
    comes from the anatomy (:func:`knee_side`); ``side`` (the sheet's) is used where the anatomy
    cannot tell, and a disagreement is logged (a left-right flip in the scan's header, or the sheet)."""
    import SimpleITK as sitk

    found = knee_side(labels)
    if found and side in ("left", "right") and found != side:
        log.warning("%s: the label map's anatomy shows a %s knee (medial tibial plate to the patient's %s), "
                    "the sample sheet says %s; measuring it as a %s knee (check the scan's left-right "
                    "orientation)", source or "label map", found, "left" if found == "right" else "right",
                    side, found)
    knee = found or (side if side in ("left", "right") else None)
    mirrored = knee == "left"
    lps = reorient(labels, "LPS")
    arr = sitk.GetArrayFromImage(lps)
    if mirrored:
        arr = np.flip(arr, axis=2)
    canon = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    spacing = np.asarray(lps.GetSpacing(), dtype=float)
    canon.SetSpacing(tuple(spacing))
    d = np.asarray(lps.GetDirection(), dtype=float).reshape(3, 3)
    f, b = np.eye(3), np.zeros(3)
    if mirrored:
        f[0, 0] = -1.0
        b[0] = (lps.GetSize()[0] - 1) * spacing[0]
    return CanonicalKnee(image=canon, side=knee, mirrored=mirrored, matrix=d @ f,
                         offset=np.asarray(lps.GetOrigin(), dtype=float) + d @ b, original=labels, lps=lps)
