"""Inference: the sliding window (nnU-Net's windows and weights) and post-processing of label maps
(medial/lateral assignment from anatomy)."""

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared

from kneeflow import phantom
from kneeflow.inference import sliding_window
from kneeflow.postprocess import MEDIAL_LATERAL, assign_medial_lateral
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


def test_sliding_window_visits_nnunets_windows_with_its_weights():
    """The predictor sees exactly nnU-Net's windows, and a constant prediction comes back unchanged
    (the weights of overlapping windows are normalised)."""
    torch = pytest.importorskip("torch")
    sw = pytest.importorskip("nnunetv2.inference.sliding_window_prediction")
    for size, patch in [((110, 64, 200), (64, 64, 96)), ((48, 97, 130), (48, 32, 32)), ((33, 40, 41), (32, 32, 32))]:
        # each voxel holds its own index: a tile's first voxel tells where the window starts
        x = torch.arange(int(np.prod(size)), dtype=torch.float64).reshape(1, 1, *size)
        seen = []

        def predictor(tiles):
            for t in tiles:
                seen.append(tuple(int(v) for v in np.unravel_index(int(t[0, 0, 0, 0]), size)))
            return torch.ones((len(tiles), 2, *patch), dtype=torch.float64)

        out = sliding_window(x, patch, predictor, batch=3)
        steps = sw.compute_steps_for_sliding_window(size, patch, 0.5)
        assert sorted(seen) == sorted((a, b, c) for a in steps[0] for b in steps[1] for c in steps[2])
        assert torch.allclose(out, torch.ones_like(out))


def test_sliding_window_is_a_weighted_mean_on_the_input_grid():
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    # a "network" that returns its input and twice it: the weighted mean of overlapping windows must
    # give back exactly that, also where the volume is smaller than a window (padded, then cropped)
    for shape in [(40, 50, 70), (20, 50, 33)]:
        x = torch.randn((1, 1, *shape), generator=gen)
        y = sliding_window(x, (32, 32, 32), lambda t: torch.cat([t, 2 * t], 1), batch=3)
        assert y.shape == (1, 2, *shape)
        torch.testing.assert_close(y, torch.cat([x, 2 * x], 1), atol=1e-5, rtol=1e-5)
    # a network that sees where it is: windows must be placed where they were cut
    x = torch.arange(40 * 50 * 70, dtype=torch.float32).reshape(1, 1, 40, 50, 70)
    torch.testing.assert_close(sliding_window(x, (32, 32, 32), lambda t: t.square()), x.square(), rtol=1e-5, atol=1e-2)
