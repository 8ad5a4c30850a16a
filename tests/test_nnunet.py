"""nnU-Net v2 back end: a tiny nnU-Net trained here, run through the workflow and through nnU-Net itself."""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from fixtures import train_tiny

from kneeflow import nnunet

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def _nnunet_env():
    """nnU-Net's folder variables (train_tiny sets them) restored afterwards."""
    names = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
    saved = {k: os.environ.get(k) for k in names}
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A real nnU-Net v2 results folder (2 epochs x 20 iterations on 6 synthetic knees at 2 mm)."""
    with _nnunet_env():
        yield train_tiny(tmp_path_factory.mktemp("nnunet"))


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Two unseen synthetic knees as nnU-Net input files (name_0000.nii.gz)."""
    import SimpleITK as sitk

    from kneeflow import phantom

    d = tmp_path_factory.mktemp("scans")
    for i in range(2):
        k = phantom.synthesize(2000 + i, "right", oa=0.5 * i, spacing=2.0, mese=False)
        im = sitk.GetImageFromArray(np.ascontiguousarray(k.image.transpose(2, 1, 0)).astype(np.float32))
        im.SetSpacing(k.spacing)
        im.SetOrigin(k.origin)
        sitk.WriteImage(im, str(d / f"scan{i}_0000.nii.gz"))
    return d


def _predict_files(folder, scans, out, prev=None):
    """nnU-Net's own path: nnUNetPredictor.predict_from_files on a folder of scans (mirroring off on
    both sides, as the public pipeline runs it), with the checkpoint kneeflow picks by default."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    import torch

    pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                           perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(folder), use_folds=(0,),
                                              checkpoint_name=nnunet.default_checkpoint(Path(folder), [0]))
    pred.predict_from_files(str(scans), str(out), save_probabilities=False, overwrite=True,
                            num_processes_preprocessing=1, num_processes_segmentation_export=1,
                            folder_with_segs_from_prev_stage=str(prev) if prev else None)


def _in_layout(scans, out, layout):
    """The scans written again in ``layout`` (the physical images unchanged)."""
    import SimpleITK as sitk

    from kneeflow.orientation import reorient

    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(scans.glob("*.nii.gz")):
        sitk.WriteImage(reorient(sitk.ReadImage(str(f)), layout), str(out / f.name))
    return out


def _run_workflow(tmp_path, scans, entry, extra_rows=()):
    """Segment the scans (and ``extra_rows``: (sample, image path)) through the workflow's segment rule."""
    sheet = tmp_path / "sheet.tsv"
    rows = [(f"scan{i}", scans / f"scan{i}_0000.nii.gz") for i in range(2)] + list(extra_rows)
    sheet.write_text("sample\tside\timage\tsplit\n" + "".join(f"{s}\tright\t{p}\ttest\n" for s, p in rows))
    cfg = {"samples": str(sheet), "allowed_roots": [str(scans), str(tmp_path)],
           "thickness": {"activate": False, "ray_in_mm": 2.5, "ray_out_mm": 10.0},
           "t2": {"activate": False, "method": "loglinear"}, "figures": {"activate": False},
           "segmentation": {"activate": True, "batch_size": 8, "models": {"tiny": entry}}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "config").mkdir(exist_ok=True)
    (tmp_path / "config" / "config.yaml").write_text((ROOT / "config" / "config.yaml").read_text())
    targets = [f"results/{s}/labels/tiny.nii.gz" for s, _ in rows]
    r = subprocess.run([str(Path(sys.executable).with_name("snakemake")), "-s", str(ROOT / "Snakefile"), "-d",
                        str(tmp_path), "--configfile", str(tmp_path / "cfg.yaml"), "--cores", "2", *targets],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return [tmp_path / t for t in targets]


@pytest.mark.slow
def test_workflow_backend_gives_nnunets_own_labels(tiny, scans, tmp_path):
    import SimpleITK as sitk

    from kneeflow.postprocess import clean_labels
    from kneeflow.orientation import DOSMA_SAGITTAL, reorient

    # as published: checkpoint_best.pth (nnU-Net writes it), no mirroring
    assert nnunet.default_checkpoint(tiny, [0]) == "checkpoint_best.pth"
    ref_dir = tmp_path / "nnunet_out"
    _predict_files(tiny, scans, ref_dir)
    # our back end, loaded once, in-process: nnU-Net's raw labels identical
    seg = nnunet.NnunetSegmenter(tiny, folds=[0], device="cpu")
    assert seg.checkpoint == "checkpoint_best.pth" and not seg.predictor.use_mirroring
    for i in range(2):
        img = sitk.ReadImage(str(scans / f"scan{i}_0000.nii.gz"))
        ours = seg.predict_array(sitk.GetArrayFromImage(img), img.GetSpacing()[::-1])
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(ref_dir / f"scan{i}.nii.gz")))
        assert ours.shape == ref.shape
        assert np.array_equal(ours, ref), f"scan{i}: {np.mean(ours != ref) * 100:.4f} % voxels differ"

    # the workflow as the public pipeline runs the model: scans put in DOSMA's sagittal layout, nnU-Net,
    # labels back on the scan's grid, every label's largest component and filled bones; the reference is
    # nnU-Net's predict_from_files on the scans written in that layout
    rip = _in_layout(scans, tmp_path / "rip", DOSMA_SAGITTAL)
    _predict_files(tiny, rip, tmp_path / "rip_out")
    # scan0 stored twice more, axially and flipped: the same labels in physical space
    stored = _in_layout(scans, tmp_path / "axial", "PRS"), _in_layout(scans, tmp_path / "flipped", "RAI")
    outs = _run_workflow(tmp_path, scans, {"nnunet": {"folder": str(tiny), "folds": [0]}},
                         [("axial0", stored[0] / "scan0_0000.nii.gz"), ("flipped0", stored[1] / "scan0_0000.nii.gz")])
    for i in range(2):
        img = sitk.ReadImage(str(scans / f"scan{i}_0000.nii.gz"))
        ref = sitk.ReadImage(str(tmp_path / "rip_out" / f"scan{i}.nii.gz"))
        ref = sitk.GetArrayFromImage(reorient(ref, "LPS")).astype(np.uint8)
        got = sitk.ReadImage(str(outs[i]))
        assert got.GetSize() == img.GetSize() and got.GetDirection() == img.GetDirection()
        assert np.array_equal(sitk.GetArrayFromImage(got), clean_labels(ref, "largest"))
    base = sitk.ReadImage(str(outs[0]))
    for out in outs[2:]:
        phys = sitk.Resample(sitk.ReadImage(str(out)), base, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        assert np.array_equal(sitk.GetArrayFromImage(phys), sitk.GetArrayFromImage(base)), out
    prov = json.loads(outs[0].with_name(outs[0].name + ".prov.json").read_text())
    assert any("checkpoint_best.pth" in k for k in prov["weights_sha256"])


@pytest.fixture(scope="module")
def tiny_cascade(tmp_path_factory):
    """A real nnU-Net v2 3d_lowres -> 3d_cascade_fullres pair (a few iterations each)."""
    with _nnunet_env():
        yield train_tiny(tmp_path_factory.mktemp("cascade"), cascade=True)


@pytest.mark.slow
def test_cascade_gives_nnunets_own_labels(tiny_cascade, scans, tmp_path):
    """lowres -> cascade: the workflow's labels equal nnU-Net's predict_from_files with the lowres
    prediction as the previous stage, voxel for voxel."""
    import SimpleITK as sitk

    from kneeflow.postprocess import clean_labels
    from kneeflow.orientation import DOSMA_SAGITTAL, reorient

    lowres, cascade = tiny_cascade
    assert json.loads((cascade / "plans.json").read_text())["configurations"]["3d_cascade_fullres"]["previous_stage"] \
        == "3d_lowres"
    rip = _in_layout(scans, tmp_path / "rip", DOSMA_SAGITTAL)
    _predict_files(lowres, rip, tmp_path / "low_out")
    _predict_files(cascade, rip, tmp_path / "cascade_out", prev=tmp_path / "low_out")
    entry = {"nnunet": {"folder": str(cascade), "folds": [0], "previous_stage": {"folder": str(lowres), "folds": [0]}}}
    outs = _run_workflow(tmp_path, scans, entry)
    differs_from_lowres = False
    for i in range(2):
        ref = sitk.ReadImage(str(tmp_path / "cascade_out" / f"scan{i}.nii.gz"))
        ref = sitk.GetArrayFromImage(reorient(ref, "LPS")).astype(np.uint8)
        got = sitk.GetArrayFromImage(sitk.ReadImage(str(outs[i])))
        assert len(np.unique(ref)) >= 3  # a comparison of many labels, not of two empty maps
        assert np.array_equal(got, clean_labels(ref, "largest")), f"scan{i}"
        low = sitk.GetArrayFromImage(reorient(sitk.ReadImage(str(tmp_path / "low_out" / f"scan{i}.nii.gz")), "LPS"))
        differs_from_lowres |= not np.array_equal(ref, low)
    assert differs_from_lowres  # the cascade's own prediction, not the lowres one passed through
    prov = json.loads(outs[0].with_name(outs[0].name + ".prov.json").read_text())
    assert any("3d_lowres" in k for k in prov["weights_sha256"]) and any("cascade" in k for k in prov["weights_sha256"])


def test_public_label_names_map_to_ours():
    public = {"background": 0, "patellar_cartilage": 1, "femoral_cartilage": 2, "medial_tibial_cartilage": 3,
              "lateral_tibial_cartilage": 4, "medial_meniscus": 5, "lateral_meniscus": 6, "femur_bone": 7,
              "tibia_bone": 8, "patella_bone": 9}
    from kneeflow.labels import CANONICAL

    assert nnunet.label_mapping({"labels": public}, convention="strict") == {
        v: (CANONICAL[nnunet.NAME_ALIASES.get(k, k)] if k != "background" else 0) for k, v in public.items()}
    swapped = {**public, "femur_bone": 9, "patella_bone": 7}
    assert nnunet.label_mapping({"labels": swapped}, convention="strict")[9] == CANONICAL["femur"]


def test_default_checkpoint_prefers_best(tmp_path):
    (tmp_path / "fold_1").mkdir()
    (tmp_path / "fold_1" / "checkpoint_final.pth").write_bytes(b"x")
    assert nnunet.default_checkpoint(tmp_path) == "checkpoint_final.pth"
    (tmp_path / "fold_1" / "checkpoint_best.pth").write_bytes(b"x")
    assert nnunet.default_checkpoint(tmp_path) == "checkpoint_best.pth"
    assert nnunet.default_checkpoint(tmp_path, [1]) == "checkpoint_best.pth"


def test_model_folder_errors(tmp_path):
    import torch

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(nnunet.ModelFolderError, match="empty: not an nnU-Net model folder \\(plans.json missing\\)"):
        nnunet.check_folder(empty, None, "checkpoint_final.pth")
    folder = tmp_path / "m"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text("{}")
    (folder / "dataset.json").write_text("{}")
    with pytest.raises(nnunet.ModelFolderError, match="no fold_\\*/checkpoint_final.pth"):
        nnunet.check_folder(folder, None, "checkpoint_final.pth")
    ck = folder / "fold_0" / "checkpoint_final.pth"
    ck.write_bytes(b"\x80\x04 not a checkpoint")
    with pytest.raises(nnunet.ModelFolderError, match="checkpoint_final.pth: not a safe weights-only checkpoint or corrupt"):
        nnunet.check_folder(folder, [0], "checkpoint_final.pth")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"network_weights": {}, "x": Evil()}, ck)
    with pytest.raises(nnunet.ModelFolderError, match="not a safe weights-only"):
        nnunet.check_folder(folder, [0], "checkpoint_final.pth")
    torch.save({"network_weights": {"w": torch.zeros(2)}}, ck)
    assert nnunet.check_folder(folder, None, "checkpoint_final.pth") == [0]
    with pytest.raises(nnunet.ModelFolderError, match="sha256 mismatch"):
        nnunet.fetch({"folder": str(folder), "sha256": {"fold_0/checkpoint_final.pth": "ab" * 32}})
    from kneeflow.models import file_sha256

    assert nnunet.fetch({"folder": str(folder), "sha256": {"fold_0/checkpoint_final.pth": file_sha256(ck)}}) == folder


def test_hub_offline_without_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(nnunet.ModelFolderError, match="HF_HUB_OFFLINE is set and the files are not in the cache"):
        nnunet.fetch({"hf": {"repo": "kneeflow/does-not-exist", "revision": "main"}}, cache_dir=str(tmp_path))


def test_hub_snapshot_from_the_cache_offline(tmp_path, monkeypatch):
    """A repo already in the Hub cache loads offline, and its checksums are verified."""
    import huggingface_hub.constants as c

    repo = "kneeflow/tiny-model"
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = tmp_path / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / commit / "Dataset1" / "fold_0"
    snap.mkdir(parents=True)
    (snap / "checkpoint_final.pth").write_bytes(b"weights")
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    folder = nnunet.fetch({"hf": {"repo": repo, "revision": "main", "subfolder": "Dataset1"}}, cache_dir=str(tmp_path))
    assert (folder / "fold_0" / "checkpoint_final.pth").read_bytes() == b"weights"
    with pytest.raises(nnunet.ModelFolderError, match="sha256 mismatch"):
        nnunet.fetch({"hf": {"repo": repo, "revision": "main", "subfolder": "Dataset1"},
                      "sha256": {"fold_0/checkpoint_final.pth": "00" * 32}}, cache_dir=str(tmp_path))
