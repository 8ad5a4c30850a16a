"""The study report (issue 22): landing page numbers equal the tables', knee pages carry the 3-D view and
open offline; rendered in headless Chromium when it is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]

sitk = pytest.importorskip("SimpleITK")
pytest.importorskip("vtk")
pytest.importorskip("plotly")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two synthetic knees through meshes, thickness, morphometrics and Dice (one segmentation damaged)."""
    from kneeflow import io, mesh, phantom
    from kneeflow.atomic import write_table
    from kneeflow.labels import CANONICAL
    from kneeflow.metrics import dice_assd
    from kneeflow.morphometrics import morphometrics
    from kneeflow.report import build_report

    root = tmp_path_factory.mktemp("study")
    res = root / "results"
    thick, morpho, dice = [], [], []
    meta = []
    for sample, seed, side, oa, group in (("kneeA", 3, "right", 0.0, "healthy"), ("kneeB", 4, "left", 0.8, "oa")):
        knee = phantom.synthesize(seed, side, oa, 1.0, mese=False)
        d = res / sample
        paths = phantom.write(knee, d / "src")
        img = io.read_volume(paths["labels"], what="label map")
        (d / "labels").mkdir(parents=True)
        io.write_image(img, d / "labels" / "provided.nii.gz")
        io.write_image(io.read_volume(paths["image"]), d / "image.nii.gz")
        meshes, t, m, _, _ = morphometrics(img, sample, side=side)
        (d / "meshes").mkdir()
        for name, poly in meshes.items():
            mesh.write_vtk(poly, d / "meshes" / f"{name}.vtk")
        write_table(t, d / "thickness.csv")
        thick.append(t)
        morpho.append(m)
        lab = sitk.GetArrayFromImage(img)
        pred = lab.copy()
        if sample == "kneeB":  # a failed segmentation: the femur cut in half
            pred[:, :, : pred.shape[2] // 2][pred[:, :, : pred.shape[2] // 2] == CANONICAL["femur"]] = 0
        for r in dice_assd(pred, lab, img.GetSpacing()[::-1], CANONICAL):
            dice.append({"sample": sample, "model": "m", **r})
        meta.append({"sample": sample, "group": group, "kl_grade": None, "side": side, "oa_severity": str(oa),
                     "split": "test"})
    tables = {}
    for name, frames in (("thickness", thick), ("morphometrics", morpho), ("dice", [pd.DataFrame(dice)])):
        tables[name] = res / "tables" / f"{name}.csv"
        write_table(pd.concat(frames, ignore_index=True), tables[name])
    (res / "logs" / "thickness").mkdir(parents=True)
    (res / "logs" / "thickness" / "kneeC.log").write_text("2026 INFO start\n2026 ERROR kneeC: label map is empty\n")
    meta = pd.DataFrame(meta)
    out = build_report(res / "report", samples=["kneeA", "kneeB"], meta=meta, results=res,
                       tables={k: str(v) for k, v in tables.items()}, run_info={"git commit": "abc123"},
                       log_dir=res / "logs", max_triangles=800,
                       stages={"demo": False, "segmentation": True, "thickness": True, "t2": False},
                       settings={"thickness": {"ray_in_mm": 2.5}})
    return {"root": root, "res": res, "out": out, "tables": tables, "meta": meta}


def _tables(page: str, match: str) -> list[pd.DataFrame]:
    """The HTML tables of ``page`` whose header has ``match`` (stdlib parser; no lxml needed)."""
    from html.parser import HTMLParser

    class P(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tables, self.row, self.cell = [], None, None

        def handle_starttag(self, tag, attrs):
            if tag == "table":
                self.tables.append([])
            elif tag == "tr" and self.tables:
                self.row = []
                self.tables[-1].append(self.row)
            elif tag in ("td", "th") and self.row is not None:
                self.cell = ""

        def handle_endtag(self, tag):
            if tag in ("td", "th") and self.cell is not None:
                self.row.append(self.cell.strip())
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

    p = P()
    p.feed(page)
    return [pd.DataFrame(t[1:], columns=t[0]) for t in p.tables if t and match in t[0]]


def test_landing_numbers_equal_the_tables(study):
    page = study["out"]["index"].read_text()
    thick = pd.read_csv(study["tables"]["thickness"])
    dice = pd.read_csv(study["tables"]["dice"])
    shown = _tables(page, "dice_mean")[0]
    femur = shown[shown.structure == "femur"].iloc[0]
    assert float(femur.dice_mean) == pytest.approx(dice[dice.structure == "femur"].dice.mean(), abs=5e-3)
    assert float(femur.dice_min) == pytest.approx(dice[dice.structure == "femur"].dice.min(), abs=5e-3)
    assert float(femur.dice_min) < 0.9  # the damaged knee shows
    shown = _tables(page, "mean_mm")[0]
    for _, r in shown.iterrows():
        want = thick[(thick.region == r.region) & (thick.stat == "mean")
                     & thick["sample"].isin(study["meta"][study["meta"].group == r.group]["sample"])].value_mm.mean()
        assert float(r.mean_mm) == pytest.approx(want, rel=5e-3), (r.region, r.group)
    # warnings from the logs, the cohort, what ran
    assert "kneeC: label map is empty" in page and "abc123" in page and "2 knees" in page


def test_landing_page_describes_every_stage(study):
    from kneeflow.report import STAGES

    page = study["out"]["index"].read_text()
    stages = _tables(page, "what it does")[0].set_index("stage")
    assert list(stages.index) == list(STAGES)
    assert stages.loc["thickness", "ran"] == "on" and stages.loc["t2", "ran"] == "off"
    assert stages.loc["ingest", "ran"] == "on"  # not a switch: every scan is read
    assert "ray_in_mm 2.5" in stages.loc["thickness", "settings"]
    assert stages.loc["thickness", "files"].startswith("2 of 2 knees")  # both wrote theirs
    assert stages.loc["t2", "files"].startswith("0 of 2 knees")
    assert stages.loc["figures", "files"] == "0 x figures/*.png"
    for name, (what, _) in STAGES.items():
        assert stages.loc[name, "what it does"] == what


def test_knee_pages_are_offline_and_carry_the_3d_view(study):
    out = study["out"]
    assert (out["index"].parent / "plotly.min.js").stat().st_size > 1_000_000
    for page in [out["index"], *[out["index"].parent / p for p in out["knees"].values()]]:
        text = page.read_text()
        for src in re.findall(r"""<(?:script|link|img)[^>]+(?:src|href)=["']([^"']+)""", text):
            assert not re.match(r"(https?:)?//", src), f"{page.name} loads {src} from the network"
    knee = (out["index"].parent / out["knees"]["kneeA"]).read_text()
    assert 'src="../plotly.min.js"' in knee and 'id="knee3d"' in knee
    for name in ("femur", "femoral_cartilage", "thickness (mm)"):
        assert name in knee
    assert "data:image/png;base64," in knee  # the label overlay
    index = out["index"].read_text()
    assert 'href=\'knees/kneeA.html\'' in index and "QC montage" in index
    assert out["bytes"] < 12e6


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_knee_page_renders_in_headless_chromium(study, tmp_path):
    exe = _chromium()
    if not exe:
        pytest.skip("no chromium on PATH (.ci/run installs Debian's chromium when run as root)")
    page = study["out"]["index"].parent / study["out"]["knees"]["kneeA"]
    shot = tmp_path / "knee.png"
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
             "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=1200,1400",
             "--virtual-time-budget=15000", "--enable-logging=stderr", "--v=0"]
    r = subprocess.run([exe, *flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True,
                       timeout=180)
    assert shot.exists(), r.stderr[-2000:]
    errors = [ln for ln in r.stderr.splitlines() if "CONSOLE" in ln and ("Uncaught" in ln or "Error" in ln)]
    assert not errors, errors
    from PIL import Image

    px = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # the 3-D view sits below the title: its pixels are not all background and hold viridis colours
    view = px[150:800]
    assert (np.abs(view - 255).sum(-1) > 30).mean() > 0.05
    viridis = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]])
    near = np.min(np.abs(view[:, :, None, :] - viridis[None, None]).sum(-1), axis=-1) < 60
    assert near.mean() > 0.002, "no thickness colours in the 3-D view"
    dom = subprocess.run([exe, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180).stdout
    assert "gl-container" in dom or "<canvas" in dom  # plotly drew its WebGL scene


def test_stage_file_patterns_name_files_the_rules_write():
    """Each stage's file pattern on the landing page matches an output the workflow's rules declare
    (a renamed output would otherwise count 0 files for a stage that ran)."""
    import fnmatch

    from kneeflow.report import STAGES

    outputs = set()
    for smk in (ROOT / "rules").glob("*.smk"):
        for path in re.findall(r'"(results/[^"]+)"', smk.read_text()):
            # a wildcard stands for one path component, as the glob's * does
            outputs.add(re.sub(r"\{[^}]+\}", "X", path)[len("results/"):])
    for name, (_, pattern) in STAGES.items():
        assert any(fnmatch.fnmatch(o, pattern) for o in outputs), (name, pattern)
