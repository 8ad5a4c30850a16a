import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import to_itk

from kneeflow import io
from kneeflow import t2 as T

TES = np.arange(1, 9) * 10.0


def _decays(t2_true, n=4000, snr=50.0, seed=0):
    rng = np.random.default_rng(seed)
    s = 1000.0 * np.exp(-TES / t2_true)
    sigma = 1000.0 / snr
    noisy = np.sqrt((s + rng.normal(0, sigma, (n, len(TES)))) ** 2 + rng.normal(0, sigma, (n, len(TES))) ** 2)
    return noisy


@pytest.mark.parametrize("method,t2_true", [("nonlinear", 20.0), ("nonlinear", 25.0), ("nonlinear", 40.0),
                                            ("nonlinear", 60.0), ("loglinear", 40.0), ("loglinear", 60.0)])
def test_known_decays_at_snr_50(method, t2_true):
    # late echoes of short T2 sit on the Rician floor: leave out those below 3 sigma
    t2, info = T.mese_t2(_decays(t2_true), TES, method=method, noise_floor_snr=3.0, noise_sigma=1000 / 50)
    assert abs(np.nanmedian(t2) / t2_true - 1) <= 0.02
    assert info["n_fitted"] == 4000


def test_exact_decay_is_recovered_exactly():
    s = 800 * np.exp(-TES / 33.0)[None]
    for fit in (T.fit_loglinear, T.fit_nonlinear):
        t2, s0 = fit(s, TES)
        assert t2[0] == pytest.approx(33.0, rel=1e-6) and s0[0] == pytest.approx(800, rel=1e-6)


def test_noise_floor_drops_echoes_in_the_noise():
    # a short T2 decays into the Rician floor: dropping those echoes removes the upward bias
    rng = np.random.default_rng(3)
    sig = np.zeros((20000, len(TES)))
    sig[:4000] = _decays(20.0, n=4000, snr=30, seed=4)
    sig[4000:] = np.sqrt(rng.normal(0, 1000 / 30, (16000, 8)) ** 2 + rng.normal(0, 1000 / 30, (16000, 8)) ** 2)
    mask = np.zeros(20000, bool)
    mask[:4000] = True
    plain, _ = T.mese_t2(sig, TES, mask, max_ms=1e9)
    floor, info = T.mese_t2(sig, TES, mask, method="nonlinear", noise_floor_snr=3.0, max_ms=1e9)
    assert info["noise_sigma"] == pytest.approx(1000 / 30, rel=0.1)
    assert abs(np.nanmedian(floor[:4000]) - 20) < abs(np.nanmedian(plain[:4000]) - 20)
    assert abs(np.nanmedian(floor[:4000]) / 20 - 1) < 0.03


def test_out_of_range_values_are_excluded_and_counted():
    s = np.stack([500 * np.exp(-TES / 30.0), 500 * np.exp(-TES / 400.0), 500 * np.exp(+TES / 50.0)])
    t2, info = T.mese_t2(s, TES)
    assert t2[0] == pytest.approx(30.0, rel=1e-5)
    assert np.isnan(t2[1]) and np.isnan(t2[2])
    assert info["n_out_of_range"] == 1 and info["n_failed"] == 1


def test_drop_first_echo():
    s = 1000 * np.exp(-TES / 40.0)[None].repeat(3, 0)
    s[:, 0] *= 1.3  # stimulated-echo contamination of echo 1
    t_all, _ = T.mese_t2(s, TES)
    t_drop, info = T.mese_t2(s, TES, drop_first_echo=True)
    assert t_drop[0] == pytest.approx(40.0, rel=1e-5) and abs(t_all[0] - 40) > 1
    assert info["echo_times_ms"][0] == 20.0


def test_real_mese_matches_pymskt(mese_dir):
    """Our log-linear map vs pymskt.image.t2.calculate_t2_linear_fit on the real series: median |diff| <= 1 ms."""
    from pymskt.image.t2 import calculate_t2_linear_fit

    scan = io.read_dicom_folder(mese_dir)
    arr = sitk.GetArrayFromImage(scan.echoes)
    ref = calculate_t2_linear_fit(arr, scan.echo_times_ms, t2_cutoff=100, r2_cutoff=0.0)["t2"]
    ours, _ = T.mese_t2(arr, scan.echo_times_ms)
    sel = (ref > 10) & (ref < 80)
    assert sel.sum() > 100_000
    diff = np.abs(ours[sel] - ref[sel])
    assert np.nanmedian(diff) <= 1.0
    assert np.isfinite(ours[sel]).mean() > 0.999
    # the non-linear fit agrees with it in the same voxels to within a few ms (median)
    sub = np.argwhere(sel)[::40]
    nl, _ = T.mese_t2(arr[tuple(sub.T)], scan.echo_times_ms, method="nonlinear")
    assert np.nanmedian(np.abs(nl - ref[tuple(sub.T)])) < 3.0


def test_qdess_round_trip():
    """The closed form inverts its own forward model (ratio = k exp(-2000 (TR - TE) / T2 - c1))."""
    import math

    tr, te, flip, area, tg = 20.36, 5.71, 20.0, 3132.0, 1560.0
    t2_true = np.array([20.0, 35.0, 50.0])
    trs, tes, tgs = tr * 1e-3, te * 1e-3, tg * 1e-6
    gl = area / (tgs * 1e6) * 100
    dkl = 4258 * 2 * math.pi * gl * tgs
    e = math.exp(-trs / T.QDESS_T1_S - trs * dkl**2 * T.QDESS_D)
    k = math.sin(math.radians(flip) / 2) ** 2 * (1 + e) / (1 - math.cos(math.radians(flip)) * e)
    c1 = (trs - tgs / 3) * dkl**2 * T.QDESS_D
    ratio = k * np.exp(-2000 * (trs - tes) / t2_true - c1)
    est = T.qdess_t2(np.ones(3), ratio, tr_ms=tr, te_ms=te, flip_deg=flip, gl_area=area, tg_us=tg)
    assert np.allclose(est, t2_true, rtol=1e-4)
    # a ratio above the steady-state limit gives no finite positive T2: excluded, not a crash
    assert np.isnan(T.qdess_t2(np.ones(1), np.array([5.0]), tr_ms=tr, te_ms=te, flip_deg=flip, gl_area=area, tg_us=tg))[0]


def test_phantom_t2_regions_and_layers(small_knee):
    ph = small_knee
    vec = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(ph.echoes, (2, 1, 0, 3))).astype(np.float32), isVector=True)
    vec.SetSpacing(ph.echo_spacing)
    vec.SetOrigin(ph.echo_origin)
    labels = to_itk(ph.labels, ph.spacing, ph.origin)
    t2img, table, info = T.sample_t2(vec, ph.truth["echo_times_ms"], labels, "k")
    assert t2img.GetSize() == vec.GetSize()
    got = table[(table.stat == "median") & (table.layer == "all")].set_index("region").value
    for region in ("femoral_cartilage", "medial_tibial_cartilage", "lateral_tibial_cartilage", "patellar_cartilage"):
        # thick MESE slices mix cartilage with fluid (long T2) at the edges: medians within 15 %
        assert got[region] == pytest.approx(ph.truth["t2_ms"][region], rel=0.15), region
    layers = set(table.layer)
    assert layers == {"all", "deep", "superficial"}
    n = table[(table.stat == "n_voxels")].set_index(["region", "layer"]).value
    assert n["femoral_cartilage", "deep"] > 0 and n["femoral_cartilage", "superficial"] > 0
    assert json.dumps(info)


def test_relative_depth_of_a_slab():
    lab = np.zeros((4, 4, 12), np.uint8)
    lab[:, :, :4] = 7
    lab[:, :, 4:8] = 2
    d = T.relative_depth(lab, [2], [7], (1.0, 1.0, 1.0))
    col = d[1, 1, 4:8]
    assert np.all(np.diff(col) > 0) and col[0] < 0.5 < col[-1]
    assert np.isnan(d[1, 1, 0])
