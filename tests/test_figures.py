import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kneeflow import figures

REGIONS = ["femoral_cartilage", "medial_tibial_cartilage", "lateral_tibial_cartilage", "patellar_cartilage"]


def _samples(n=6):
    return pd.DataFrame({"sample": [f"s{i}" for i in range(n)], "group": ["healthy", "oa"] * (n // 2),
                         "kl_grade": [str(i % 4) for i in range(n)], "side": ["right", "left"] * (n // 2)})


def _thickness(samples):
    rng = np.random.default_rng(0)
    rows = []
    for s in samples["sample"]:
        for r in REGIONS:
            for stat in ("mean", "std"):
                rows.append({"sample": s, "bone": "x", "region": r, "stat": stat, "value_mm": float(rng.uniform(1, 3))})
    return pd.DataFrame(rows)


def _image_ok(path, min_size=(400, 250), min_ink=0.01):
    im = np.asarray(Image.open(path).convert("L"), dtype=float)
    assert im.shape[1] >= min_size[0] and im.shape[0] >= min_size[1]
    # not blank: a good share of pixels differ from the background
    assert (np.abs(im - np.median(im)) > 30).mean() > min_ink
    return im


def test_thickness_by_group_draws_the_table(tmp_path):
    s = _samples()
    th = _thickness(s)
    data = figures.thickness_by_group(th, s, tmp_path / "t.png")
    _image_ok(tmp_path / "t.png")
    assert (tmp_path / "t.pdf").stat().st_size > 1000
    back = pd.read_csv(tmp_path / "t.csv")
    ref = th[th.stat == "mean"].set_index(["sample", "region"]).value_mm
    got = back.set_index(["sample", "region"]).value_mm
    assert len(got) == len(ref) and np.allclose(got.sort_index(), ref.sort_index(), atol=1e-5)
    assert set(back.group) == {"healthy", "oa"} and len(data) == len(ref)


def test_missing_group_draws_no_data_panel(tmp_path, caplog):
    s = _samples()
    s["group"] = "healthy"
    figures.thickness_by_group(_thickness(s), s, tmp_path / "t.png")
    assert any("without data" in r.message for r in caplog.records)
    _image_ok(tmp_path / "t.png", min_ink=0.003)


def test_empty_table_does_not_crash(tmp_path):
    figures.t2_by_group(pd.DataFrame(columns=["sample", "region", "layer", "stat", "value"]), _samples(), tmp_path / "e.png")
    figures.dice_by_structure(pd.DataFrame(columns=["sample", "model", "structure", "dice", "assd_mm"]), tmp_path / "d.png")
    figures.training_curves({}, tmp_path / "c.png")
    figures.runtime_per_rule(pd.DataFrame(), tmp_path / "r.png")
    for f in ("e", "d", "c", "r"):
        _image_ok(tmp_path / f"{f}.png", min_size=(300, 200), min_ink=0.003)


def test_t2_dice_training_runtime(tmp_path):
    s = _samples()
    rng = np.random.default_rng(1)
    t2 = pd.DataFrame([{"sample": x, "region": r, "layer": layer, "stat": "median", "value": float(rng.uniform(30, 50))}
                       for x in s["sample"] for r in REGIONS for layer in ("all", "deep", "superficial")])
    d = figures.t2_by_group(t2, s, tmp_path / "t2.png")
    assert len(d) == len(s) * len(REGIONS) * 2
    dice = pd.DataFrame([{"sample": x, "model": "m", "structure": st, "dice": float(rng.uniform(.5, 1)), "assd_mm": 1.0}
                         for x in s["sample"] for st in ("femur", "tibia")])
    dd = figures.dice_by_structure(dice, tmp_path / "dice.png")
    assert np.allclose(sorted(dd.dice), sorted(dice.dice))
    m = pd.DataFrame({"epoch": [0, 1, 2], "train_loss": [2.0, 1.5, 1.2], "val_dice_femur": [.3, .6, .8]})
    tc = figures.training_curves({"m": m}, tmp_path / "tc.png")
    assert set(tc.metric) == {"train_loss", "val_dice_femur"}
    bench = pd.DataFrame({"rule": ["a", "a", "b"], "job": ["1", "2", "1"], "s": [1.0, 2.0, 5.0], "max_rss": [1, 2, 3]})
    rt = figures.runtime_per_rule(bench, tmp_path / "rt.png")
    assert rt.s.sum() == 8.0
    for f in ("t2", "dice", "tc", "rt"):
        _image_ok(tmp_path / f"{f}.png")


def test_flattened_map_mirrors_left_knees():
    rng = np.random.default_rng(2)
    pts = rng.normal(0, 20, (3000, 3))
    th = np.where(pts[:, 0] > 0, 2.0, 1.0)  # thicker at +x
    g_r, xe, _ = figures.femoral_thickness_map(pts, th, "right")
    g_l, _, _ = figures.femoral_thickness_map(pts, th, "left")
    xc = 0.5 * (xe[1:] + xe[:-1])
    right_medial = np.nanmean(g_r[xc > 5]), np.nanmean(g_r[xc < -5])
    left_medial = np.nanmean(g_l[xc > 5]), np.nanmean(g_l[xc < -5])
    assert right_medial[0] > right_medial[1] and left_medial[0] < left_medial[1]
    assert np.nanmax(g_r) == pytest.approx(2.0)


def test_bscore_figure_writes_the_plotted_scores(tmp_path):
    rng = np.random.default_rng(1)
    oa = np.linspace(0, 1, 10)
    t = pd.DataFrame({"sample": [f"s{i}" for i in range(10)], "group": ["healthy"] * 5 + ["oa"] * 5,
                      "kl_grade": ["0"] * 10, "oa_severity": oa, "side": "right", "bscore": oa * 5 + rng.normal(0, 0.1, 10),
                      "nsm_assd_mm": 0.2, "used_to_fit_bscore": [True, False] * 5})
    figures.bscore_by_group(t, tmp_path / "b.png")
    _image_ok(tmp_path / "b.png")
    back = pd.read_csv(tmp_path / "b.csv")
    assert np.allclose(back.sort_values("sample").bscore, t.sort_values("sample").bscore)
    assert set(back.columns) >= {"sample", "group", "oa_severity", "bscore", "used_to_fit_bscore"}
    # no OA severity (real cohorts): the right panel says so instead of an empty axis
    figures.bscore_by_group(t.assign(oa_severity=np.nan), tmp_path / "c.png")
    _image_ok(tmp_path / "c.png", min_ink=0.005)


def test_export_parity_figure(tmp_path):
    recs = [{"name": "m", "artifacts": {
        "onnx": {"max_abs": 2e-5, "prediction": "run: onnxruntime"},
        "coreml_fp32": {"prediction": "not run: CoreML prediction needs macOS"},
        "coreml_fp16": {"prediction": "not run: CoreML prediction needs macOS",
                        "torch_fp16_vs_fp32": {"max_abs": 3e-2}}}}]
    data = figures.export_parity(recs, tmp_path / "p.png")
    _image_ok(tmp_path / "p.png")
    back = pd.read_csv(tmp_path / "p.csv")
    assert len(back) == 3 == len(data)
    assert back.set_index(["format", "measure"]).loc[("onnx", "max abs error (run)"), "value"] == pytest.approx(2e-5)
    assert (back.measure == "not measured").sum() == 1
    figures.export_parity([], tmp_path / "e.png")
    _image_ok(tmp_path / "e.png", min_ink=0.003)
