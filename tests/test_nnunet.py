"""nnU-Net v2 back end: a tiny nnU-Net trained here, run through the workflow and through nnU-Net itself."""

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


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A real nnU-Net v2 results folder (2 epochs x 20 iterations on 6 synthetic knees at 2 mm)."""
    wd = tmp_path_factory.mktemp("nnunet")
    saved = {k: os.environ.get(k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    folder = train_tiny(wd)
    yield folder
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


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


@pytest.mark.slow
def test_workflow_backend_gives_nnunets_own_labels(tiny, scans, tmp_path):
    import SimpleITK as sitk
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    import torch

    from kneeflow.inference import BONE_LABELS, keep_largest_components

    # nnU-Net's own path: predict_from_files on the folder of scans
    ref_dir = tmp_path / "nnunet_out"
    # mirroring off on both sides: nnU-Net mirrors along all 3 axes (8 passes), which only costs CI time here
    pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                           perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(tiny), use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    pred.predict_from_files(str(scans), str(ref_dir), save_probabilities=False, overwrite=True,
                            num_processes_preprocessing=1, num_processes_segmentation_export=1)
    # our back end, loaded once, in-process: nnU-Net's raw labels identical
    seg = nnunet.NnunetSegmenter(tiny, folds=[0], device="cpu", mirror=False)
    refs = {}
    for i in range(2):
        img = sitk.ReadImage(str(scans / f"scan{i}_0000.nii.gz"))
        ours = seg.predict_array(sitk.GetArrayFromImage(img), img.GetSpacing()[::-1])
        refs[i] = sitk.GetArrayFromImage(sitk.ReadImage(str(ref_dir / f"scan{i}.nii.gz")))
        assert ours.shape == refs[i].shape
        assert np.array_equal(ours, refs[i]), f"scan{i}: {np.mean(ours != refs[i]) * 100:.4f} % voxels differ"

    # the same model through the workflow (segment rule, nnunet back end, one job for both scans)
    sheet = tmp_path / "sheet.tsv"
    rows = ["sample\tside\timage\tsplit"] + [f"scan{i}\tright\t{scans / f'scan{i}_0000.nii.gz'}\ttest" for i in range(2)]
    sheet.write_text("\n".join(rows) + "\n")
    cfg = {"samples": str(sheet), "allowed_roots": [str(scans), str(tmp_path)],
           "thickness": {"activate": False, "ray_in_mm": 2.5, "ray_out_mm": 10.0},
           "t2": {"activate": False, "method": "loglinear"}, "figures": {"activate": False},
           "segmentation": {"activate": True, "batch_size": 8, "mirror": False,
                            "models": {"tiny": {"nnunet": {"folder": str(tiny), "folds": [0]}}}}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text((ROOT / "config" / "config.yaml").read_text())
    targets = [f"results/scan{i}/labels/tiny.nii.gz" for i in range(2)]
    r = subprocess.run([str(Path(sys.executable).with_name("snakemake")), "-s", str(ROOT / "Snakefile"), "-d",
                        str(tmp_path), "--configfile", str(tmp_path / "cfg.yaml"), "--cores", "2", *targets],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    for i in range(2):
        got = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / targets[i])))
        # the workflow maps nnU-Net's labels to canonical (identity here: canonical names) and keeps the
        # largest component of each bone
        assert np.array_equal(got, keep_largest_components(refs[i].astype(np.uint8), BONE_LABELS))
    prov = json.loads((tmp_path / (targets[0] + ".prov.json")).read_text())
    assert any("checkpoint_final.pth" in k for k in prov["weights_sha256"])


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
