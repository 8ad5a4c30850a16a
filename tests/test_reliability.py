"""Bad inputs through the workflow, interruptions, resumable training and safe loading."""

import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml
from conftest import ROOT

from kneeflow import models, phantom

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
FAST = {"thickness": {"activate": True, "ray_in_mm": 2.5, "ray_out_mm": 10.0, "femoral_subregions": False},
        "mesh": {"bone_smooth_var_mm2": 0.5, "cartilage_smooth_var_mm2": 0.3125,
                 "n_points": {"femur": 4000, "tibia": 4000, "patella": 2000}}}


def _workdir(tmp: Path, rows: list[dict], extra: dict | None = None) -> Path:
    (tmp / "config").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "config" / "config.yaml", tmp / "config" / "config.yaml")
    cols = ["sample", "side", "image", "sequence", "echoes", "labels", "label_convention", "split"]
    lines = ["\t".join(cols)] + ["\t".join(str(r.get(c, "")) for c in cols) for r in rows]
    (tmp / "config" / "samples.tsv").write_text("\n".join(lines) + "\n")
    cfg = {"samples": "config/samples.tsv", "allowed_roots": [".."], **FAST, **(extra or {})}
    (tmp / "config" / "run.yaml").write_text(yaml.safe_dump(cfg))
    return tmp


def _snakemake(wd: Path, *args, timeout=1200):
    return subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-d", str(wd), "--configfile", "config/run.yaml",
                           "--cores", "2", *args], cwd=wd, capture_output=True, text=True, timeout=timeout)


def _knee(d: Path, seed: int, side="right", oa=0.0, spacing=1.0):
    ph = phantom.synthesize(seed, side, oa, spacing=spacing, mese=True)
    phantom.write(ph, d)
    return ph


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two good knees and one bad input per kind, through `snakemake --keep-going`."""
    wd = tmp_path_factory.mktemp("corpus")
    data = wd / "data"
    good = []
    for i, seed in enumerate((41, 42)):
        _knee(data / f"good{i}", seed, "right" if i == 0 else "left")
        good.append({"sample": f"good{i}", "side": "right" if i == 0 else "left", "image": f"../../data/good{i}/image.nii.gz",
                     "echoes": f"../../data/good{i}/echoes.nii.gz", "labels": f"../../data/good{i}/labels.nii.gz",
                     "label_convention": "canonical"})
    g = data / "good0"
    img = sitk.ReadImage(str(g / "image.nii.gz"))
    lab = sitk.ReadImage(str(g / "labels.nii.gz"))
    bad_dir = data / "bad"
    bad_dir.mkdir()
    rows, expect = [], {}

    def add(name, problem, **cols):
        rows.append({"sample": name, "side": "right", "label_convention": "canonical", **cols})
        expect[name] = problem

    # truncated image
    raw = (g / "image.nii.gz").read_bytes()
    (bad_dir / "trunc.nii.gz").write_bytes(raw[: len(raw) // 3])
    add("truncated", "truncated or corrupt gzip", image="../../data/bad/trunc.nii.gz")
    # all-zero image
    z = sitk.Image(img.GetSize(), sitk.sitkInt16)
    z.CopyInformation(img)
    sitk.WriteImage(z, str(bad_dir / "zero.nii.gz"))
    add("allzero", "image is constant", image="../../data/bad/zero.nii.gz")
    # empty file, wrong extension
    (bad_dir / "empty.nii.gz").write_bytes(b"")
    add("emptyfile", "empty", image="../../data/bad/empty.nii.gz")
    shutil.copy(g / "image.nii.gz", bad_dir / "scan.png")
    add("wrongext", "extension", image="../../data/bad/scan.png")
    # 2-D and 4-D images
    sitk.WriteImage(img[:, :, 40], str(bad_dir / "slice.nii.gz"))
    add("twod", "2-D", image="../../data/bad/slice.nii.gz")
    sitk.WriteImage(sitk.ReadImage(str(g / "echoes.nii.gz")), str(bad_dir / "echoes4d.nii.gz"))
    add("fourd", "4-D", image="../../data/bad/echoes4d.nii.gz")
    # label map with unknown labels; label map with another geometry than its image
    arr = sitk.GetArrayFromImage(lab)
    arr2 = arr.copy()
    arr2[0, 0, 0] = 77
    u = sitk.GetImageFromArray(arr2)
    u.CopyInformation(lab)
    sitk.WriteImage(u, str(bad_dir / "unknown.nii.gz"))
    add("unknownlabels", "not in the declared convention", image="../../data/good0/image.nii.gz",
        labels="../../data/bad/unknown.nii.gz")
    shifted = sitk.GetImageFromArray(arr)
    shifted.CopyInformation(lab)
    shifted.SetOrigin(tuple(o + 5.0 for o in lab.GetOrigin()))
    sitk.WriteImage(shifted, str(bad_dir / "shifted.nii.gz"))
    add("geometry", "geometry differs", image="../../data/good0/image.nii.gz", labels="../../data/bad/shifted.nii.gz")
    # a bone missing from the label map (the thickness job fails with its name)
    nobone = arr.copy()
    nobone[nobone == 8] = 0
    nb = sitk.GetImageFromArray(nobone)
    nb.CopyInformation(lab)
    sitk.WriteImage(nb, str(bad_dir / "notibia.nii.gz"))
    add("notibia", "tibia .* is empty", labels="../../data/bad/notibia.nii.gz")
    # multi-echo NIfTI with one echo missing (7 images, 8 echo times)
    e = sitk.GetArrayFromImage(sitk.ReadImage(str(g / "echoes.nii.gz")))
    e7 = sitk.GetImageFromArray(e[..., :7], isVector=True)
    e7.CopyInformation(sitk.ReadImage(str(g / "echoes.nii.gz")))
    sitk.WriteImage(e7, str(bad_dir / "echo7.nii.gz"))
    shutil.copy(g / "echoes.json", bad_dir / "echo7.json")
    add("echomissing", "7 echoes but echo times", image="../../data/good0/image.nii.gz",
        echoes="../../data/bad/echo7.nii.gz", labels="../../data/good0/labels.nii.gz")
    # NaN spacing in a NRRD header
    sitk.WriteImage(img, str(bad_dir / "nan.nrrd"))
    t = (bad_dir / "nan.nrrd").read_bytes()
    head, _, body = t.partition(b"\n\n")
    head = b"\n".join(ln if not ln.startswith(b"space directions") else b"space directions: (nan,0,0) (0,1,0) (0,0,1)"
                      for ln in head.split(b"\n"))
    (bad_dir / "nan.nrrd").write_bytes(head + b"\n\n" + body)
    add("nanspacing", "spacing must be positive", image="../../data/bad/nan.nrrd")
    # a label map that is not a label map (float intensities)
    sitk.WriteImage(sitk.Cast(img, sitk.sitkFloat32) * 0.37, str(bad_dir / "floatlabels.nii.gz"))
    add("floatlabels", "non-integer values", labels="../../data/bad/floatlabels.nii.gz")
    # DICOM folders: a missing slice, and two series mixed in one folder (copies of the real MESE series)
    import pydicom

    from conftest import shared

    mese = shared("pymskt", "MESE_T2_dicom_data_anon")
    locs = sorted({round(float(pydicom.dcmread(f, stop_before_pixels=True).SliceLocation), 3) for f in mese.iterdir()})
    for name in ("gap", "mixed"):
        (bad_dir / name).mkdir()
    for f in sorted(mese.iterdir()):
        ds = pydicom.dcmread(f)
        if round(float(ds.SliceLocation), 3) != locs[10]:
            ds.save_as(bad_dir / "gap" / f.name)
        if float(ds.EchoTime) > 40:
            ds.SeriesInstanceUID = "1.2.826.0.1.3680043.99.1"
        ds.save_as(bad_dir / "mixed" / f.name)
    add("dicomgap", "missing slices", image="../../data/bad/gap", sequence="mese")
    add("dicommixed", "mixed series", image="../../data/bad/mixed", sequence="mese")
    wd = _workdir(wd / "run", good + rows)
    r = _snakemake(wd, "--keep-going")
    return wd, r, expect


@pytest.mark.slow
def test_good_samples_finish_despite_bad_ones(corpus):
    wd, r, _ = corpus
    assert r.returncode != 0  # some jobs failed ...
    for s in ("good0", "good1"):  # ... but every good sample has all its results
        for f in ("thickness.csv", "t2.csv", "qc.json", "t2map.nii.gz"):
            assert (wd / "results" / s / f).stat().st_size > 0, (s, f)


@pytest.mark.slow
def test_each_bad_input_fails_alone_with_one_line(corpus):
    wd, r, expect = corpus
    out = r.stdout + r.stderr
    import re

    for sample, problem in expect.items():
        logs = list((wd / "results" / "logs").glob(f"*/{sample}.log"))
        lines = [ln for lg in logs for ln in lg.read_text().splitlines() if ln.startswith("ERROR ")]
        assert lines, f"{sample}: no ERROR line in its logs {logs}"
        assert any(re.search(problem, ln) for ln in lines), (sample, lines)
        assert any(f"sample={sample}:" in ln and re.search(problem, ln) for ln in out.splitlines()), sample
        # no partial or empty outputs left behind
        for f in (wd / "results" / sample).rglob("*") if (wd / "results" / sample).exists() else []:
            if f.is_file() and not f.name.startswith(".snakemake"):
                assert f.stat().st_size > 0, f
        # the failed stage left no output; stages that do not depend on the bad file still ran
        failed_output = "t2.csv" if sample == "echomissing" else "thickness.csv"
        assert not (wd / "results" / sample / failed_output).exists()
    assert (wd / "results" / "echomissing" / "thickness.csv").exists()
    assert not list((wd / "results").rglob("*.part*"))


# ---------------------------------------------------------------------------------------- interruption


def _small_run(tmp: Path) -> Path:
    data = tmp / "data"
    rows = []
    for i, seed in enumerate((51, 52)):
        _knee(data / f"k{i}", seed)
        rows.append({"sample": f"k{i}", "side": "right", "image": f"../../data/k{i}/image.nii.gz",
                     "echoes": f"../../data/k{i}/echoes.nii.gz", "labels": f"../../data/k{i}/labels.nii.gz",
                     "label_convention": "canonical"})
    return _workdir(tmp / "run", rows)


@pytest.mark.slow
def test_kill_minus_9_then_rerun_incomplete_gives_identical_tables(tmp_path):
    ref = _small_run(tmp_path / "a")
    assert _snakemake(ref).returncode == 0
    wd = _small_run(tmp_path / "b")
    p = subprocess.Popen([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-d", str(wd), "--configfile", "config/run.yaml",
                          "--cores", "2"], cwd=wd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list((wd / "results" / "logs").glob("thickness/*.log")):
        time.sleep(0.2)
    time.sleep(1.0)  # a thickness job is running now
    os.killpg(p.pid, signal.SIGKILL)  # snakemake and its jobs
    p.wait()
    assert not (wd / "results" / "tables" / "thickness.csv").exists()
    # a killed Snakemake leaves its lock: the documented recovery is --unlock, then --rerun-incomplete
    assert _snakemake(wd, "--rerun-incomplete").returncode != 0
    assert _snakemake(wd, "--unlock").returncode == 0
    r = _snakemake(wd, "--rerun-incomplete")
    assert r.returncode == 0, r.stderr[-2000:]
    for t in ("thickness.csv", "t2.csv"):
        assert (wd / "results" / "tables" / t).read_bytes() == (ref / "results" / "tables" / t).read_bytes(), t


# ---------------------------------------------------------------------------------------- training


def _tiny_cases(tmp: Path):
    cases = []
    for seed in (61, 62):
        d = tmp / f"c{seed}"
        _knee(d, seed, spacing=2.0)
        cases.append((str(d / "image.nii.gz"), str(d / "labels.nii.gz")))
    return cases


TINY = {"name": "mednext_custom", "init_filters": 4, "blocks_down": [1, 1, 1, 1], "blocks_bottleneck": 1,
        "blocks_up": [1, 1, 1, 1], "kernel_size": 3, "deep_supervision": True}


@pytest.mark.slow
def test_training_resumes_after_kill_with_identical_weights(tmp_path):
    cases = _tiny_cases(tmp_path)
    code = (
        "import sys, logging; sys.path.insert(0, %r); logging.basicConfig(level=logging.INFO)\n"
        "from kneeflow.training import TrainConfig, train\n"
        "cfg = TrainConfig(arch=%r, patch_size=(32, 32, 32), epochs=3, iterations_per_epoch=3, threads=1, seed=3)\n"
        "train(%r, %r, sys.argv[1], cfg)\n" % (str(ROOT / "src"), TINY, cases[:1], cases[1:])
    )
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, "-c", code, str(ref)], check=True, capture_output=True, timeout=600)
    out = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "optimizer_last.pt").exists():
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    _, meta = models.load_checkpoint(out / "checkpoint_last.pt")
    assert meta["epoch"] < 2  # killed before the end
    r = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming from" in r.stderr
    a, _ = models.load_checkpoint(ref / "checkpoint.pt")
    b, _ = models.load_checkpoint(out / "checkpoint.pt")
    for k in a:
        assert np.array_equal(a[k].numpy(), b[k].numpy()), k
    assert (ref / "metrics.csv").read_text() .count("\n") == (out / "metrics.csv").read_text().count("\n") == 4


@pytest.mark.slow
def test_bad_scan_does_not_hold_back_its_segmentation_batch(tmp_path):
    """One segmentation job serves a batch of scans; a corrupt scan in it fails alone."""
    data = tmp_path / "data"
    rows = []
    for name, seed, split in (("tr0", 71, "train"), ("tr1", 72, "train"), ("te0", 73, "test"), ("te1", 74, "test")):
        _knee(data / name, seed, spacing=2.0)
        rows.append({"sample": name, "side": "right", "image": f"../../data/{name}/image.nii.gz",
                     "labels": f"../../data/{name}/labels.nii.gz" if split == "train" else "",
                     "label_convention": "canonical", "split": split})
    raw = (data / "te1" / "image.nii.gz").read_bytes()
    (data / "bad.nii.gz").write_bytes(raw[: len(raw) // 3])
    rows.insert(3, {"sample": "bad", "side": "right", "image": "../../data/bad.nii.gz", "label_convention": "canonical",
                    "split": "test"})
    seg = {"activate": True, "batch_size": 8, "validation_cases": 1, "mirror": False, "models": {"tiny": {"train": {
        "arch": TINY, "patch_size": [32, 32, 32], "epochs": 1, "iterations_per_epoch": 2, "threads": 1}}}}
    wd = _workdir(tmp_path / "run", rows, {"segmentation": seg})
    targets = [f"results/{s}/labels/tiny.nii.gz" for s in ("te0", "bad", "te1")]
    r = _snakemake(wd, "--keep-going", *targets)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    res = wd / "results"
    # one batch job for all three scans, and the good ones got their labels on their ingested grid
    assert len(list((res / "logs" / "segment").glob("*.log"))) == 1
    for s in ("te0", "te1"):
        lab, img = sitk.ReadImage(str(res / s / "labels" / "tiny.nii.gz")), sitk.ReadImage(str(res / s / "image.nii.gz"))
        assert lab.GetSize() == img.GetSize() and lab.GetOrigin() == img.GetOrigin(), s
        assert (res / s / "labels" / "tiny.nrrd").exists()
    # the bad scan failed in its own job with the file and the problem, and left nothing behind
    assert any("sample=bad:" in ln and "bad.nii.gz" in ln and "truncated or corrupt gzip" in ln for ln in out.splitlines())
    assert not (res / "bad" / "labels" / "tiny.nii.gz").exists()
    assert not list(res.rglob("*.part*"))
    import json

    manifest = json.loads(next((res / "models" / "tiny" / "segmented").glob("batch*/manifest.json")).read_text())
    assert "truncated or corrupt gzip" in manifest["samples"]["bad"]["error"]
    assert set(manifest["samples"]) == {"te0", "bad", "te1"}


# ---------------------------------------------------------------------------------------- safe loading


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_with_code_is_refused(tmp_path):
    import torch

    p = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "meta": "{}", "payload": _Evil()}, p)
    with pytest.raises(models.CheckpointError, match="not a safe weights-only checkpoint"):
        models.load_checkpoint(p)
    q = tmp_path / "plain.pkl"
    q.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(models.CheckpointError, match="not a safe weights-only"):
        models.load_checkpoint(q)


def test_checksum_mismatch_and_corrupt_checkpoint(tmp_path):
    import torch

    net = models.build({**TINY, "out_channels": 3})
    p = tmp_path / "ok.pt"
    models.save_checkpoint(p, net.state_dict(), {"arch": {**TINY, "out_channels": 3}})
    good = models.file_sha256(p)
    state, meta = models.load_checkpoint(p, sha256=good)
    assert set(state) == set(net.state_dict())
    with pytest.raises(models.CheckpointError, match="sha256 mismatch"):
        models.load_checkpoint(p, sha256="0" * 64)
    bad = tmp_path / "trunc.pt"
    bad.write_bytes(p.read_bytes()[:200])
    with pytest.raises(models.CheckpointError, match=str(bad)):
        models.load_checkpoint(bad)
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(models.CheckpointError, match="not a kneeflow checkpoint"):
        models.load_checkpoint(tmp_path / "other.pt")
