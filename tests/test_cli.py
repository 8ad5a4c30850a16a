"""The `kneeflow` command: stages listed, one-line errors naming the file, provenance, public models by hand."""

import json
import subprocess
import sys

import numpy as np
import SimpleITK as sitk
from conftest import SHARED

KNEEFLOW = [sys.executable, "-m", "kneeflow"]


def kf(*args, cwd=None):
    return subprocess.run([*KNEEFLOW, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_help_lists_every_stage():
    out = kf("--help").stdout
    for stage in ("phantom", "ingest", "labels", "thickness", "subregions", "t2", "segment", "train", "nsm",
                  "bscore", "export", "run"):
        assert f"    {stage}" in out, stage
    assert "fit" in kf("nsm", "--help").stdout and "--ray-out-mm" in kf("thickness", "--help").stdout


def test_a_failing_stage_prints_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "labels.nii.gz"
    img = sitk.GetImageFromArray(np.full((8, 8, 8), 42, np.uint8))
    sitk.WriteImage(img, str(bad))
    log = tmp_path / "logs" / "x.log"
    r = kf("labels", "--sample", "k1", "--labels", bad, "--out", tmp_path / "out.nii.gz", "--log", log)
    assert r.returncode == 1
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("ERROR ")]
    assert len(err) == 1 and err[0].startswith("ERROR labels sample=k1: ") and str(bad) in err[0] and "42" in err[0]
    assert err[0] in log.read_text() and not (tmp_path / "out.nii.gz").exists()


def test_labels_writes_canonical_labels_with_provenance(tmp_path):
    src = SHARED / "pymskt" / "SAG_3D_DESS_RIGHT_bones_cart_men_fib-label.nrrd"
    out = tmp_path / "provided.nii.gz"
    r = kf("labels", "--sample", "dess", "--labels", src, "--convention", "pymskt", "--out", out)
    assert r.returncode == 0, r.stderr
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(src)))
    assert ((raw == 5) == (lab == 7)).all()  # pymskt's femur (5) is canonical 7
    rec = json.loads(out.with_name(out.name + ".prov.json").read_text())
    assert rec["rule"] == "labels" and rec["params"]["convention"] == "pymskt" and str(src) in rec["inputs"]


def test_bscore_by_hand_with_the_public_model(tmp_path):
    model = SHARED / "public" / "bscore_bone_only_jan_2025_model.json"
    m = json.loads(model.read_text())
    v = np.asarray(m["bscore_vector"])
    fit = tmp_path / "nsm.json"
    fit.write_text(json.dumps({"sample": "k1", "latent": ((m["mean_healthy"] + 2 * m["std_healthy"]) * v).tolist()}))
    r = kf("bscore", "--model", model, fit, "--out", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr
    assert abs(json.loads((tmp_path / "b.json").read_text())["k1"] - 2.0) < 1e-9
    fit.write_text(json.dumps({"sample": "k1", "latent": [0.0] * 16}))
    r = kf("bscore", "--model", model, fit)
    assert r.returncode == 1 and "512 values" in r.stderr and "latents of size 16" in r.stderr
