"""Post-processing of predicted label maps: medial/lateral assignment from anatomy."""

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared

from kneeflow import phantom
from kneeflow.inference import MEDIAL_LATERAL, assign_medial_lateral
from kneeflow.labels import CANONICAL, PYMSKT, remap_to_canonical


def _merged(arr):
    """Every medial/lateral pair collapsed onto the lateral label (a network that cannot tell them apart)."""
    out = arr.copy()
    for med, lat in MEDIAL_LATERAL:
        out[out == med] = lat
    return out


def _dice(a, b, c):
    return 2 * ((a == c) & (b == c)).sum() / ((a == c).sum() + (b == c).sum())


def test_real_right_knee_medial_lateral_recovered():
    """A real DESS label map (oblique grid): the anatomy-based split recovers the expert's labels."""
    img = sitk.ReadImage(str(shared("pymskt", "SAG_3D_DESS_RIGHT_bones_cart_men_fib-label.nrrd")))
    ref = remap_to_canonical(sitk.GetArrayFromImage(img).astype(np.int64), PYMSKT).astype(np.uint8)
    out = assign_medial_lateral(_merged(ref), img, "right")
    for med, lat in MEDIAL_LATERAL:
        assert _dice(out, ref, med) > 0.99 and _dice(out, ref, lat) > 0.99, (med, lat)
    # pymskt's labels as the file holds them: the fibula is lateral of the tibia and below the plateau
    arr = sitk.GetArrayFromImage(img)
    d = np.asarray(img.GetDirection()).reshape(3, 3) * np.asarray(img.GetSpacing())

    def centre(label):
        idx = np.nonzero(arr == label)
        return np.asarray(img.GetOrigin()) + d @ np.array([idx[2].mean(), idx[1].mean(), idx[0].mean()])

    fib, tib = centre(PYMSKT["fibula"]), centre(PYMSKT["tibia"])
    med, lat = centre(PYMSKT["medial_meniscus"]), centre(PYMSKT["lateral_meniscus"])
    assert fib[0] < tib[0] - 10 and fib[2] < tib[2]  # right knee: lateral is -x (patient right)
    assert med[0] > tib[0] > lat[0]
    # the wrong side swaps them: the assignment really depends on `side`
    wrong = assign_medial_lateral(_merged(ref), img, "left")
    assert _dice(wrong, ref, CANONICAL["medial_tibial_cartilage"]) < 0.01


@pytest.mark.parametrize("side", ["left", "right"])
def test_phantom_knees_both_sides(side):
    ph = phantom.synthesize(7, side, 0.3, spacing=1.0, mese=False)
    ref = np.ascontiguousarray(ph.labels.transpose(2, 1, 0))  # (x, y, z) -> (z, y, x)
    img = sitk.GetImageFromArray(ref)
    img.SetSpacing(ph.spacing)
    img.SetOrigin(ph.origin)
    out = assign_medial_lateral(_merged(ref), img, side)
    assert np.array_equal(out, ref)


def test_unknown_side_is_an_error():
    with pytest.raises(ValueError, match="side must be"):
        assign_medial_lateral(np.zeros((4, 4, 4), np.uint8), sitk.Image(4, 4, 4, sitk.sitkUInt8), "")
