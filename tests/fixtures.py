"""Test data made on the fly: a meshed synthetic femur, a tiny trained nnU-Net (used by tests and benchmarks)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from kneeflow.labels import CANONICAL


def synthetic_femur(seed: int, side: str = "right", oa: float = 0.0, spacing: float = 1.0, n_points: int = 6000):
    """The phantom's femur (:func:`kneeflow.phantom.femur_labels`) meshed as the workflow meshes bones."""
    import SimpleITK as sitk

    from kneeflow import mesh, phantom

    m, sp, org = phantom.femur_labels(seed, side, oa, spacing)
    img = sitk.GetImageFromArray(np.ascontiguousarray(m.transpose(2, 1, 0)))
    img.SetSpacing(sp)
    img.SetOrigin(org)
    return mesh.bone_mesh(img, [1], n_points, smooth_var_mm2=0.5, bone="femur", crop_percent=1.0)


def train_tiny(workdir: str | os.PathLike, n_cases: int = 6, spacing: float = 2.0, epochs: int = 2,
               iterations: int = 20, seed: int = 0) -> Path:
    """Train a small nnU-Net v2 (3d_fullres) on synthetic knees, for tests and benchmarks.

    Writes nnUNet_raw / nnUNet_preprocessed / nnUNet_results under ``workdir`` and returns the trained
    model folder. A few iterations only: the point is a real nnU-Net folder, not a good model.
    """
    import random

    import SimpleITK as sitk
    import torch

    from kneeflow import phantom

    wd = Path(workdir)
    env = {"nnUNet_raw": wd / "raw", "nnUNet_preprocessed": wd / "preprocessed", "nnUNet_results": wd / "results"}
    for k, v in env.items():
        v.mkdir(parents=True, exist_ok=True)
        os.environ[k] = str(v)
    os.environ.setdefault("nnUNet_n_proc_DA", "1")
    ds = env["nnUNet_raw"] / "Dataset901_KneeTiny"
    (ds / "imagesTr").mkdir(parents=True, exist_ok=True)
    (ds / "labelsTr").mkdir(parents=True, exist_ok=True)
    for i in range(n_cases):
        k = phantom.synthesize(1000 + i, "left" if i % 2 else "right", oa=(i % 3) / 3, spacing=spacing, mese=False)

        def img(a, dtype):
            im = sitk.GetImageFromArray(np.ascontiguousarray(a.transpose(2, 1, 0)).astype(dtype))
            im.SetSpacing(k.spacing)
            im.SetOrigin(k.origin)
            return im

        sitk.WriteImage(img(k.image, np.float32), str(ds / "imagesTr" / f"knee_{i:03d}_0000.nii.gz"))
        sitk.WriteImage(img(k.labels, np.uint8), str(ds / "labelsTr" / f"knee_{i:03d}.nii.gz"))
    labels = {"background": 0, **{n: v for n, v in sorted(CANONICAL.items(), key=lambda kv: kv[1])}}
    (ds / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": labels,
                                                 "numTraining": n_cases, "file_ending": ".nii.gz"}, indent=1))
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                      preprocess)

    extract_fingerprints([901], num_processes=1, check_dataset_integrity=True, verbose=False,
                         show_progress_bar=False)
    plans_id = plan_experiments([901])
    preprocess([901], plans_id, configurations=("3d_fullres",), num_processes=(1,), verbose=False)
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    pre = env["nnUNet_preprocessed"] / "Dataset901_KneeTiny"
    plans = load_json(str(pre / f"{plans_id}.json"))
    # the tiny model: patch 48^3 at the planned spacing
    plans["configurations"]["3d_fullres"]["patch_size"] = [48, 48, 48]
    plans["continue_training"] = False  # what nnU-Net's own run_training sets
    trainer = nnUNetTrainer(plans, "3d_fullres", 0, load_json(str(pre / "dataset.json")), device=torch.device("cpu"))
    trainer.num_epochs = epochs
    trainer.num_iterations_per_epoch = iterations
    trainer.num_val_iterations_per_epoch = 2
    trainer.run_training()
    return Path(trainer.output_folder_base)
