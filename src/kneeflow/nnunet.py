"""nnU-Net v2 model folders as a segmentation back end, and model weights from local folders or the Hub.

A trained nnU-Net v2 results folder (``Dataset.../<Trainer>__<Plans>__<configuration>/`` with
``plans.json``, ``dataset.json`` and ``fold_<k>/checkpoint_best.pth`` or ``checkpoint_final.pth``) is
loaded once through ``nnUNetPredictor.initialize_from_trained_model_folder`` and reused for every scan
of a batch; a lowres -> cascade pair runs the low-resolution model first and hands its segmentation to
the cascade (nnU-Net's ``previous stage``).

As the public knee pipeline runs its nnU-Net models: ``checkpoint_best.pth`` when the folder has it,
no test-time mirroring, every scan put in DOSMA's sagittal layout ("LR", "SI", "AP"; orientation code
``RIP``) first and the labels brought back onto the scan's grid, each label's largest connected
component kept and holes filled in the bones (``clean: largest``). Each is a setting of the model entry (``checkpoint``,
``mirror``, ``layout``, ``clean``). Labels are mapped to kneeflow's by their dataset.json names
(``femur_bone`` -> ``femur``, ...).
Before nnU-Net loads a checkpoint (it uses ``torch.load(weights_only=False)`` itself), kneeflow loads
it with ``weights_only=True``, so a checkpoint that needs code to unpickle is refused.

Weights: a model entry names a local ``folder`` or a Hugging Face ``hf: {repo, revision, subfolder}``
(``huggingface_hub.snapshot_download``: honours ``HF_HUB_OFFLINE`` and the cache), and optional
``sha256: {relative path: checksum}``; a mismatch is refused.
"""

from __future__ import annotations

__all__ = ["DEFAULT_CHECKPOINTS", "ModelFolderError", "NAME_ALIASES", "NnunetSegmenter", "check_folder",
           "default_checkpoint", "fetch", "label_mapping", "verify_checksums"]

import json
import logging
import os
from pathlib import Path

import numpy as np

from kneeflow.labels import CANONICAL

log = logging.getLogger(__name__)

#: checkpoints in the order a model entry without ``checkpoint`` uses them (the public models: best)
DEFAULT_CHECKPOINTS = ("checkpoint_best.pth", "checkpoint_final.pth")
#: dataset.json label names of the public knee models that differ from kneeflow's
NAME_ALIASES = {"femur_bone": "femur", "tibia_bone": "tibia", "patella_bone": "patella"}


class ModelFolderError(ValueError):
    """A model folder that cannot be used; the message names the folder and what is missing or wrong."""


def fetch(entry: dict, cache_dir: str | None = None) -> Path:
    """The local folder of a model entry: ``folder`` as given, or a Hub snapshot (offline-aware)."""
    if entry.get("folder"):
        folder = Path(entry["folder"])
        if not folder.is_dir():
            raise ModelFolderError(f"{folder}: model folder not found")
    elif entry.get("hf"):
        from huggingface_hub import snapshot_download

        hf = entry["hf"]
        sub = hf.get("subfolder", "").strip("/")
        try:
            root = snapshot_download(repo_id=hf["repo"], revision=hf.get("revision"), cache_dir=cache_dir,
                                     allow_patterns=[f"{sub}/*", f"{sub}/**"] if sub else None)
        except Exception as e:  # noqa: BLE001 - network, auth, offline cache miss
            offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
            raise ModelFolderError(f"huggingface {hf['repo']}@{hf.get('revision', 'main')}: cannot get the model "
                                   f"({type(e).__name__}: {str(e).splitlines()[0][:200]})"
                                   + ("; HF_HUB_OFFLINE is set and the files are not in the cache" if offline else "")
                                   ) from None
        folder = Path(root) / sub if sub else Path(root)
    else:
        raise ModelFolderError("a model entry needs `folder` or `hf: {repo, revision, subfolder}`")
    verify_checksums(folder, entry.get("sha256") or {})
    return folder


def verify_checksums(folder: Path, sha256: dict[str, str]) -> None:
    from kneeflow.checksum import sha256 as file_sha256

    for rel, want in sha256.items():
        p = folder / rel
        if not p.exists():
            raise ModelFolderError(f"{p}: file listed in sha256 is missing")
        got = file_sha256(p)
        if got != want.lower():
            raise ModelFolderError(f"{p}: sha256 mismatch: expected {want}, got {got}")


def default_checkpoint(folder: Path, folds=None) -> str:
    """``checkpoint_best.pth`` when every (or any, without ``folds``) fold has it, else ``checkpoint_final.pth``."""
    dirs = [folder / f"fold_{k}" for k in folds] if folds else sorted(folder.glob("fold_*"))
    for name in DEFAULT_CHECKPOINTS:
        if dirs and all((d / name).exists() for d in dirs):
            return name
    return DEFAULT_CHECKPOINTS[-1]


def check_folder(folder: Path, folds, checkpoint: str) -> list:
    """Refuse folders without plans/dataset json or checkpoints, before nnU-Net tries (and fails obscurely)."""
    for f in ("plans.json", "dataset.json"):
        if not (folder / f).exists():
            raise ModelFolderError(f"{folder}: not an nnU-Net model folder ({f} missing)")
    if folds is None:
        folds = sorted(int(p.name.split("_")[1]) if p.name.split("_")[1].isdigit() else p.name.split("_", 1)[1]
                       for p in folder.glob("fold_*") if (p / checkpoint).exists())
        if not folds:
            raise ModelFolderError(f"{folder}: no fold_*/{checkpoint}")
    for k in folds:
        ck = folder / f"fold_{k}" / checkpoint
        if not ck.exists():
            raise ModelFolderError(f"{ck}: checkpoint missing")
        _safe_check(ck)
    return list(folds)


def _numpy_data_globals() -> list:
    """numpy scalar and dtype constructors: data, not code (nnU-Net's checkpoints log numpy floats)."""
    import numpy

    core = getattr(numpy, "_core", None) or numpy.core
    out = [core.multiarray.scalar, numpy.dtype]
    out += [getattr(numpy.dtypes, n) for n in dir(numpy.dtypes) if n.endswith("DType")]
    return out


def _safe_check(path: Path) -> None:
    import torch

    try:
        with torch.serialization.safe_globals(_numpy_data_globals()):
            torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ModelFolderError(f"{path}: not a safe weights-only checkpoint or corrupt "
                               f"({type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''})"
                               ) from None


def label_mapping(dataset_json: dict, convention: str = "canonical") -> dict[int, int]:
    """nnU-Net label value -> canonical value (by structure name; identity for canonical models)."""
    labels = dataset_json["labels"]
    out = {}
    for name, v in labels.items():
        if isinstance(v, (list, tuple)):  # region-based models are not segmentation label maps
            raise ModelFolderError(f"region-based nnU-Net label {name!r} is not supported")
        name = NAME_ALIASES.get(name, name)
        if name in ("background",):
            out[int(v)] = 0
        elif name in CANONICAL:
            out[int(v)] = CANONICAL[name]
        elif convention == "canonical":
            out[int(v)] = int(v)
        else:
            raise ModelFolderError(f"nnU-Net label {name!r} has no canonical counterpart")
    return out


class NnunetSegmenter:
    """One loaded nnU-Net predictor (optionally with its lowres stage), many scans.

    ``checkpoint`` None picks :func:`default_checkpoint`; ``layout`` is the orientation code scans are
    put in before prediction (None: as stored); ``clean`` the clean-up of
    :func:`kneeflow.postprocess.clean_labels` (``largest``, as published: every label's largest
    component, holes filled in the bones).
    """

    def __init__(self, folder, folds=None, checkpoint: str | None = None, device: str = "cpu",
                 mirror: bool = False, previous_stage: dict | None = None, tile_step_size: float = 0.5,
                 layout: str | None = None, clean: str = "largest"):
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        self.folder = Path(folder)
        self.checkpoint = checkpoint or default_checkpoint(self.folder, folds)
        self.folds = check_folder(self.folder, folds, self.checkpoint)
        self.layout = layout
        self.clean = clean
        self.predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=mirror,
                                         perform_everything_on_device=device.startswith("cuda"),
                                         device=torch.device(device), verbose=False, verbose_preprocessing=False,
                                         allow_tqdm=False)
        self.predictor.initialize_from_trained_model_folder(str(self.folder), use_folds=tuple(self.folds),
                                                            checkpoint_name=self.checkpoint)
        self.mapping = label_mapping(json.loads((self.folder / "dataset.json").read_text()))
        self.previous = None
        if previous_stage:
            self.previous = NnunetSegmenter(fetch(previous_stage), previous_stage.get("folds"),
                                            previous_stage.get("checkpoint"), device, mirror)
        log.info("nnU-Net model %s folds %s (%s) loaded on %s%s", self.folder, self.folds, self.checkpoint, device,
                 f" after its previous stage {self.previous.folder}" if self.previous else "")

    def weights(self) -> list[Path]:
        """The checkpoint files this predictor (and its previous stage) loaded."""
        own = [self.folder / f"fold_{k}" / self.checkpoint for k in self.folds]
        return own + (self.previous.weights() if self.previous else [])

    def predict_array(self, arr_zyx: np.ndarray, spacing_zyx) -> np.ndarray:
        """nnU-Net's own labels for a (z, y, x) array (the axis order of its SimpleITK reader)."""
        props = {"spacing": [float(s) for s in spacing_zyx]}
        prev = None
        if self.previous is not None:
            # the previous stage's raw labels, with the channel axis nnU-Net's preprocessor expects (as
            # its reader gives the segmentations of `folder_with_segs_from_prev_stage`: float32)
            prev = self.previous.predict_array(arr_zyx, spacing_zyx)[None].astype(np.float32)
        return self.predictor.predict_single_npy_array(arr_zyx[None].astype(np.float32), props, prev, None, False)

    def predict(self, image):
        """Canonical label map (SimpleITK, uint8) on ``image``'s grid."""
        from kneeflow.orientation import predict_in_layout

        return predict_in_layout(self._predict, image, self.layout)

    def _predict(self, image):
        import SimpleITK as sitk

        from kneeflow.postprocess import clean_labels

        arr = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32))
        seg = self.predict_array(arr, image.GetSpacing()[::-1])
        lut = np.zeros(max(self.mapping) + 1, dtype=np.uint8)
        for k, v in self.mapping.items():
            lut[k] = v
        lab = clean_labels(lut[np.asarray(seg, dtype=np.int64)], self.clean, sorted(set(self.mapping.values()) - {0}))
        out = sitk.GetImageFromArray(lab)
        out.CopyInformation(image)
        return out
