import json

import numpy as np
import pytest
from conftest import to_itk

from kneeflow import phantom
from kneeflow.labels import CANONICAL


def test_deterministic_for_a_seed():
    a = phantom.synthesize(3, "left", 0.4, spacing=1.2, mese=True)
    b = phantom.synthesize(3, "left", 0.4, spacing=1.2, mese=True)
    assert np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.echoes, b.echoes)
    assert a.truth == b.truth
    c = phantom.synthesize(4, "left", 0.4, spacing=1.2, mese=False)
    assert not np.array_equal(a.labels, c.labels)


def test_truth_volumes_are_exact(small_knee):
    vox = float(np.prod(small_knee.spacing))
    for name, value in CANONICAL.items():
        assert small_knee.truth["volumes_mm3"][name] == pytest.approx((small_knee.labels == value).sum() * vox, abs=1e-6)
        assert small_knee.truth["volumes_mm3"][name] > 0, name


def test_all_structures_and_plausible_sizes(small_knee):
    t = small_knee.truth
    assert set(t["labels"]) == set(CANONICAL)
    # femur/tibia in the field of view tens of cm^3, cartilage a few cm^3
    assert 3e4 < t["volumes_mm3"]["femur"] < 3e5
    assert 1e3 < t["volumes_mm3"]["femoral_cartilage"] < 2e4
    for region in ("femoral_cartilage", "medial_tibial_cartilage", "lateral_tibial_cartilage", "patellar_cartilage"):
        assert 1.2 < t["thickness_mm"][region] < 3.6, region


def _centroid_x(ph, name):
    return np.argwhere(ph.labels == CANONICAL[name])[:, 0].mean()


def test_left_knee_is_mirrored():
    r = phantom.synthesize(11, "right", 0.0, spacing=1.2, mese=False)
    lft = phantom.synthesize(11, "left", 0.0, spacing=1.2, mese=False)
    # LPS: medial of a right knee is +x; of a left knee -x
    assert _centroid_x(r, "medial_tibial_cartilage") > _centroid_x(r, "lateral_tibial_cartilage")
    assert _centroid_x(lft, "medial_tibial_cartilage") < _centroid_x(lft, "lateral_tibial_cartilage")


def test_oa_thins_medial_cartilage_and_widens_condyles():
    h = phantom.synthesize(21, "right", 0.0, spacing=1.2, mese=False)
    o = phantom.synthesize(21, "right", 1.0, spacing=1.2, mese=False)
    assert o.truth["thickness_mm"]["medial_tibial_cartilage"] < 0.8 * h.truth["thickness_mm"]["medial_tibial_cartilage"]
    assert o.truth["thickness_mm"]["lateral_tibial_cartilage"] == pytest.approx(
        h.truth["thickness_mm"]["lateral_tibial_cartilage"], rel=0.05)
    assert o.truth["volumes_mm3"]["femur"] > 1.05 * h.truth["volumes_mm3"]["femur"]
    assert o.truth["t2_ms"]["femoral_cartilage"] > h.truth["t2_ms"]["femoral_cartilage"]


def test_dess_like_contrast(small_knee):
    img, lab = small_knee.image.astype(float), small_knee.labels
    cart = np.median(img[lab == CANONICAL["femoral_cartilage"]])
    marrow = np.median(img[(lab == CANONICAL["femur"])])
    men = np.median(img[lab == CANONICAL["medial_meniscus"]])
    assert cart > 1.3 * marrow > 1.3 * men


@pytest.mark.slow
@pytest.mark.parametrize("seed,side,oa", [(7, "right", 0.0), (8, "left", 0.9)])
def test_truth_thickness_matches_an_independent_measurement(seed, side, oa):
    """Mesh-based thickness (pymskt's convention) on the written labels agrees with truth.json."""
    from kneeflow.thickness import measure_knee

    ph = phantom.synthesize(seed, side, oa, mese=False)
    _, table = measure_knee(to_itk(ph.labels, ph.spacing, ph.origin), "p")
    means = table[table.stat == "mean"].set_index("region").value_mm
    for region, truth in ph.truth["thickness_mm"].items():
        assert abs(means[region] - truth) <= 0.15, (region, means[region], truth)


def test_cli_writes_files(tmp_path):
    phantom.main(["--seed", "5", "--side", "left", "--oa", "0.3", "--spacing", "1.5", "--out", str(tmp_path)])
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert truth["side"] == "left" and truth["seed"] == 5 and truth["oa_severity"] == 0.3
    import SimpleITK as sitk

    lab = sitk.ReadImage(str(tmp_path / "labels.nii.gz"))
    arr = sitk.GetArrayFromImage(lab)
    assert truth["volumes_mm3"]["tibia"] == pytest.approx((arr == 8).sum() * 1.5**3)
    ech = sitk.ReadImage(str(tmp_path / "echoes.nii.gz"))
    assert ech.GetNumberOfComponentsPerPixel() == len(truth["echo_times_ms"]) == 8


def test_bad_parameters():
    with pytest.raises(ValueError, match="oa severity"):
        phantom.synthesize(1, "right", 1.5)
    with pytest.raises(ValueError, match="side"):
        phantom.synthesize(1, "up", 0.0)


def test_contrast_option_scales_tissue_differences():
    std = phantom.synthesize(13, "right", 0.0, spacing=1.2, mese=False)
    assert np.array_equal(phantom.synthesize(13, "right", 0.0, spacing=1.2, mese=False, contrast=1.0).image, std.image)
    low = phantom.synthesize(13, "right", 0.0, spacing=1.2, mese=False, contrast=0.6)
    high = phantom.synthesize(13, "right", 0.0, spacing=1.2, mese=False, contrast=1.4)
    assert np.array_equal(low.labels, std.labels) and low.truth == std.truth

    def gap(ph):  # femoral cartilage over femoral marrow
        img = ph.image.astype(float)
        return np.median(img[ph.labels == CANONICAL["femoral_cartilage"]]) - np.median(img[ph.labels == CANONICAL["femur"]])

    assert gap(low) < 0.75 * gap(std) < 0.75 * gap(high)
    with pytest.raises(ValueError, match="contrast"):
        phantom.synthesize(1, "right", 0.0, contrast=0.0)
