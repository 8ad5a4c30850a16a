"""DOSMA's 2-D Keras models: small models with DOSMA's I/O, trained and saved as .h5 under TensorFlow
(Keras 2 API, tests/dosma_train.py), segment synthetic knees through the workflow, alone and fused by
STAPLE. TensorFlow runs only in child processes (the workflow's jobs, the training script): it is
never loaded beside torch in one process."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from dosma_train import knee
from kneeflow.orientation import reorient

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("tf_keras") is None:
    pytest.skip("DOSMA models need tensorflow-cpu and tf-keras (requirements.txt)", allow_module_level=True)
PLANES = ("sagittal", "coronal", "axial")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """One small model per plane, trained on three synthetic knees' slices, saved as .h5."""
    d = tmp_path_factory.mktemp("dosma")
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "dosma_train.py"), str(d)], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return {p: d / f"{p}_best_model.h5" for p in PLANES}


def _dice(a, b, c):
    return 2 * ((a == c) & (b == c)).sum() / max((a == c).sum() + (b == c).sum(), 1)


def _workflow(tmp_path, entries, scans, check=True):
    """Segment ``scans`` [(sample, path)] with every model entry {name: entry} through the workflow."""
    sheet = tmp_path / "sheet.tsv"
    sheet.write_text("sample\tside\timage\tsplit\n" + "".join(f"{s}\tright\t{p}\ttest\n" for s, p in scans))
    files = [f for e in entries.values() for f in (e["dosma"] if isinstance(e["dosma"], list) else [e["dosma"]])]
    cfg = {"samples": str(sheet), "allowed_roots": sorted({str(tmp_path)} | {str(Path(f["file"]).parent) for f in files}),
           "thickness": {"activate": False}, "t2": {"activate": False}, "figures": {"activate": False},
           "segmentation": {"activate": True, "batch_size": 8, "models": entries}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "config").mkdir(exist_ok=True)
    (tmp_path / "config" / "config.yaml").write_text((ROOT / "config" / "config.yaml").read_text())
    targets = [f"results/{s}/labels/{m}.nii.gz" for m in entries for s, _ in scans]
    r = subprocess.run([str(Path(sys.executable).with_name("snakemake")), "-s", str(ROOT / "Snakefile"), "-d",
                        str(tmp_path), "--configfile", str(tmp_path / "cfg.yaml"), "--cores", "2", "--keep-going",
                        *targets], capture_output=True, text=True, timeout=900)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
        return {m: [sitk.ReadImage(str(tmp_path / f"results/{s}/labels/{m}.nii.gz")) for s, _ in scans] for m in entries}
    return r


@pytest.mark.slow
def test_sagittal_model_segments_through_the_workflow_in_any_layout(models, tmp_path):
    image, labels = knee(60)
    scans = []
    for code in ("LPS", "RIP", "PRS"):  # as synthesised, DOSMA's own layout, axial
        p = tmp_path / f"knee_{code}.nii.gz"
        sitk.WriteImage(reorient(image, code), str(p))
        scans.append((f"k{code}", p))
    outs = _workflow(tmp_path, {"sag": {"dosma": {"file": str(models["sagittal"]), "plane": "sagittal"}}}, scans)["sag"]
    ref = sitk.GetArrayFromImage(labels)
    first = sitk.GetArrayFromImage(outs[0])
    assert outs[0].GetSize() == image.GetSize()
    dice = {c: _dice(first, ref, c) for c in (7, 8)}
    print("sagittal model Dice femur %.3f tibia %.3f" % (dice[7], dice[8]))
    assert min(dice.values()) > 0.75, dice  # femur, tibia: the small model learnt them from three knees
    for out in outs[1:]:  # the same labels in physical space whatever the stored layout
        phys = sitk.Resample(out, outs[0], sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        assert np.array_equal(sitk.GetArrayFromImage(phys), first)
    prov = json.loads((tmp_path / "results/kLPS/labels/sag.nii.gz.prov.json").read_text())
    assert str(models["sagittal"]) in prov["weights_sha256"] or any("sagittal_best_model.h5" in k
                                                                   for k in prov["weights_sha256"])


@pytest.mark.slow
def test_three_planes_fused_by_staple(models, tmp_path):
    image, labels = knee(61)
    p = tmp_path / "knee.nii.gz"
    sitk.WriteImage(image, str(p))
    entries = {k: {"dosma": {"file": str(models[k]), "plane": k}} for k in PLANES}
    entries["fused"] = {"dosma": [{"file": str(models[k]), "plane": k} for k in PLANES], "fuse": "staple"}
    outs = {m: sitk.GetArrayFromImage(v[0]) for m, v in _workflow(tmp_path, entries, [("k", p)]).items()}
    ref = sitk.GetArrayFromImage(labels)
    fused = outs["fused"]
    print({m: round(_dice(o, ref, 7), 3) for m, o in outs.items()})
    assert _dice(fused, ref, 7) > 0.75 and _dice(fused, ref, 8) > 0.75
    assert all(not np.array_equal(fused, outs[k]) for k in PLANES)  # the fusion is not one of its inputs
    # coronal's patellar cartilage and axial's tibial cartilage and menisci never win alone in the fusion
    assert not np.any((fused == 1) & (outs["sagittal"] != 1) & (outs["axial"] != 1))


def _in_child(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT / 'src')!r})\n" + code],
                          capture_output=True, text=True, timeout=300)


def test_corrupt_or_missing_h5_is_a_clear_error(tmp_path):
    bad = tmp_path / "sagittal_best_model.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # an HDF5 signature and nothing else
    r = _in_child(
        "from kneeflow.dosma import DosmaError, load_keras, parse_entry\n"
        "for f in sys.argv[1:]:\n"
        "    try:\n"
        "        load_keras(f)\n"
        "    except DosmaError as e:\n"
        "        print(e)\n"
        "for entry in ({'dosma': {'file': sys.argv[1], 'plane': 'oblique'}},\n"
        "              {'dosma': {'file': sys.argv[1], 'sha256': 'ab' * 32}},\n"
        "              {'dosma': [{'file': sys.argv[1]}, {'file': sys.argv[1], 'plane': 'axial'}]}):\n"
        "    try:\n"
        "        parse_entry(entry)\n"
        "    except DosmaError as e:\n"
        "        print(e)\n".replace("sys.argv[1:]", repr([str(bad), str(tmp_path / "missing.h5")]))
        .replace("sys.argv[1]", repr(str(bad))))
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith(f"{bad}: not a loadable Keras model file")
    assert lines[1] == f"{tmp_path / 'missing.h5'}: DOSMA model file not found"
    assert "unknown plane 'oblique'" in lines[2] and "sha256 mismatch" in lines[3]
    assert "need `fuse: staple`" in lines[4]


@pytest.mark.slow
def test_corrupt_h5_fails_its_batch_with_the_file_named(tmp_path):
    bad = tmp_path / "models" / "axial_best_model.h5"
    bad.parent.mkdir()
    bad.write_bytes(b"not a model")
    image, _ = knee(62, spacing=3.0)
    p = tmp_path / "knee.nii.gz"
    sitk.WriteImage(image, str(p))
    r = _workflow(tmp_path, {"bad": {"dosma": {"file": str(bad), "plane": "axial"}}}, [("k", p)], check=False)
    assert r.returncode != 0
    assert f"{bad}: not a loadable Keras model file" in r.stderr
    assert not (tmp_path / "results/k/labels/bad.nii.gz").exists()
