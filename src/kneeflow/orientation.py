"""Array layouts: which way a scan's axes run, and putting a scan in the layout a model expects.

Layouts are orientation codes in SimpleITK's (DICOM) convention: one letter per image axis (i, j, k,
i.e. x, y, z of the file; the SimpleITK array's axes reversed), naming the direction in which that
axis' index grows: ``"LPS"`` is an identity direction matrix; DOSMA's sagittal layout
("LR", "SI", "AP": index grows to the right, to inferior, to posterior) is ``"RIP"``. Reorienting
only permutes and flips axes (SimpleITK's ``DICOMOrient``, no interpolation), so it is exactly undone.
"""

from __future__ import annotations

__all__ = ["DOSMA_SAGITTAL", "check_layout", "dosma_layout", "layout_of", "mirror_left_right", "parse_layout",
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
