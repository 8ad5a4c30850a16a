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


def _tiny_dataset(wd: Path, dataset_id: int, n_cases: int, spacing: float) -> str:
    """nnUNet_raw / _preprocessed / _results under ``wd`` (set in the environment) with ``n_cases``
    synthetic knees as Dataset<id>_KneeTiny; returns the dataset's name."""
    import SimpleITK as sitk

    from kneeflow import phantom

    env = {"nnUNet_raw": wd / "raw", "nnUNet_preprocessed": wd / "preprocessed", "nnUNet_results": wd / "results"}
    for k, v in env.items():
        v.mkdir(parents=True, exist_ok=True)
        os.environ[k] = str(v)
    os.environ.setdefault("nnUNet_n_proc_DA", "1")
    os.environ.setdefault("nnUNet_def_n_proc", "1")
    name = f"Dataset{dataset_id}_KneeTiny"
    ds = env["nnUNet_raw"] / name
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
    return name


def _train(plans: dict, configuration: str, pre: Path, epochs: int, iterations: int, seed: int,
           lr: float | None = None):
    import random

    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # the trainer takes `continue_training` out of the plans it is given: each gets its own copy
    plans = {**json.loads(json.dumps(plans)), "continue_training": False}  # what nnU-Net's own run_training sets
    trainer = nnUNetTrainer(plans, configuration, 0, load_json(str(pre / "dataset.json")), device=torch.device("cpu"))
    trainer.num_epochs = epochs
    if lr is not None:
        trainer.initial_lr = lr
    trainer.num_iterations_per_epoch = iterations
    trainer.num_val_iterations_per_epoch = 2
    trainer.run_training()
    return trainer


def train_tiny(workdir: str | os.PathLike, n_cases: int = 6, spacing: float = 2.0, epochs: int = 2,
               iterations: int = 20, seed: int = 0, cascade: bool = False) -> Path | tuple[Path, Path]:
    """Train a small nnU-Net v2 on synthetic knees, for tests and benchmarks: 3d_fullres, or with
    ``cascade`` a 3d_lowres -> 3d_cascade_fullres pair (returns both model folders).

    Writes nnUNet_raw / nnUNet_preprocessed / nnUNet_results under ``workdir`` and returns the trained
    model folder(s). A few iterations only: the point is a real nnU-Net folder, not a good model.
    The cascade's lowres stage is planned by hand (nnU-Net plans one only for large images) at twice
    the full-resolution spacing; fold 0 validates on every case, so that the lowres model predicts
    the next stage's input for every training case, as the cascade's training needs.
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                      preprocess)

    wd = Path(workdir)
    dataset_id = 902 if cascade else 901
    name = _tiny_dataset(wd, dataset_id, n_cases, spacing)
    extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=True, verbose=False,
                         show_progress_bar=False)
    plans_id = plan_experiments([dataset_id])
    pre = wd / "preprocessed" / name
    plans_file = pre / f"{plans_id}.json"
    plans = json.loads(plans_file.read_text())
    confs = plans["configurations"]
    # the tiny model: patch 48^3 at the planned spacing, a quarter of the planned features per stage
    confs["3d_fullres"]["patch_size"] = [48, 48, 48]
    arch = confs["3d_fullres"]["architecture"]["arch_kwargs"]
    arch["features_per_stage"] = [max(4, f // 4) for f in arch["features_per_stage"]]
    if not cascade:
        preprocess([dataset_id], plans_id, configurations=("3d_fullres",), num_processes=(1,), verbose=False)
        return Path(_train(plans, "3d_fullres", pre, epochs, iterations, seed).output_folder_base)
    low = json.loads(json.dumps(confs["3d_fullres"]))
    low.update({"data_identifier": f"{plans_id}_3d_lowres", "spacing": [2 * s for s in low["spacing"]],
                "patch_size": [32, 32, 32],
                "median_image_size_in_voxels": [max(1, m // 2) for m in low["median_image_size_in_voxels"]],
                "next_stage": "3d_cascade_fullres"})
    confs["3d_lowres"] = low
    confs["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    plans_file.write_text(json.dumps(plans, indent=1))
    cases = [f"knee_{i:03d}" for i in range(n_cases)]
    (pre / "splits_final.json").write_text(json.dumps([{"train": cases, "val": cases}]))
    preprocess([dataset_id], plans_id, configurations=("3d_fullres", "3d_lowres"), num_processes=(1, 1),
               verbose=False)
    # a small learning rate keeps both networks near their random start, so that their labels are
    # many and varied (a few iterations at nnU-Net's rate collapse a tiny model to background), which
    # is what a voxel-for-voxel comparison with nnU-Net needs
    lowres = _train(plans, "3d_lowres", pre, 1, iterations // 2, seed, lr=1e-4)
    lowres.perform_actual_validation(False)  # writes predicted_next_stage/3d_cascade_fullres for every case
    cascade_trainer = _train(plans, "3d_cascade_fullres", pre, 1, iterations // 2, seed, lr=1e-4)
    return Path(lowres.output_folder_base), Path(cascade_trainer.output_folder_base)
