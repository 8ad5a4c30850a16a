"""Training a segmentation network from the registry on (image, label map) pairs.

Patches with foreground oversampling (a third of the patches centred on a voxel of a randomly chosen
foreground class, so thin cartilage is seen often), z-score intensity normalisation, random flips
and intensity jitter; Dice + cross-entropy, with deep supervision when the network returns several
resolutions (weights 1, 1/2, 1/4, ... normalised; targets resized nearest-neighbour); AdamW with a
poly learning-rate decay; bf16 autocast on GPU. After every epoch the state goes to
``checkpoint_last.pt`` (atomic), so a killed job resumes from the last finished epoch; ``metrics.csv``
gets one row per epoch (losses and validation Dice per label). Seeded: the same data and config give
the same weights on CPU.
"""

from __future__ import annotations

__all__ = ["PatchSampler", "TrainConfig", "deep_supervision_loss", "normalise",
           "read_case", "resample_to_spacing", "train"]

import csv
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kneeflow.atomic import atomic_path
from kneeflow.labels import CANONICAL
from kneeflow.metrics import dice
from kneeflow.io import read_volume
from kneeflow.orientation import check_layout, layout_of
from kneeflow.preprocessing import normalise, read_case, resample_to_spacing  # noqa: F401 - used and re-exported

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    arch: dict
    patch_size: tuple[int, int, int] = (64, 64, 64)
    spacing: tuple[float, float, float] | None = None  # mm (x, y, z); None keeps each image's own grid
    # orientation code every training case is put in (kneeflow.preprocessing; e.g. "LPS", "RIP");
    # None: the first training image's; recorded in the checkpoint, so inference reorients scans to it
    layout: str | None = None
    batch_size: int = 2
    epochs: int = 10
    iterations_per_epoch: int = 50
    lr: float = 1e-3
    weight_decay: float = 1e-4
    foreground_fraction: float = 0.33
    seed: int = 0
    num_classes: int = 10
    ds_weights: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125, 0.0625)
    amp: bool = True
    threads: int = 0
    # "side": medial and lateral tibial cartilage (and menisci) are one class in training and are
    # split at inference from the knee's side and the tibial midline (kneeflow.inference.
    # assign_medial_lateral); the left-right flips make them ambiguous in a patch anyway.
    # "model": the network learns the distinction itself.
    medial_lateral: str = "side"
    # validation Dice every `val_every` epochs and after the last (blank in metrics.csv in between)
    val_every: int = 1
    label_convention: dict = field(default_factory=lambda: dict(CANONICAL))


# ---------------------------------------------------------------------------------------------- data


class PatchSampler:
    def __init__(self, cases, patch, fg_fraction, rng):
        self.cases, self.patch, self.fg, self.rng = cases, np.asarray(patch), fg_fraction, rng
        # foreground voxel lists per case and class (subsampled to keep memory small)
        self.fg_index = []
        for _, lab in cases:
            per = {}
            for c in np.unique(lab):
                if c == 0:
                    continue
                idx = np.argwhere(lab == c)
                per[int(c)] = idx[:: max(1, len(idx) // 5000)]
            self.fg_index.append(per)

    def sample(self):
        i = int(self.rng.integers(len(self.cases)))
        img, lab = self.cases[i]
        shape = np.asarray(img.shape)
        if self.rng.random() < self.fg and self.fg_index[i]:
            c = self.rng.choice(list(self.fg_index[i]))
            pts = self.fg_index[i][c]
            centre = pts[self.rng.integers(len(pts))]
        else:
            centre = np.array([self.rng.integers(s) for s in shape])
        lo = np.clip(centre - self.patch // 2, 0, np.maximum(shape - self.patch, 0))
        sl = tuple(slice(a, a + p) for a, p in zip(lo, self.patch))
        x, y = img[sl], lab[sl]
        pad = [(0, max(0, p - s)) for p, s in zip(self.patch, x.shape)]
        if any(p[1] for p in pad):
            x = np.pad(x, pad, constant_values=float(img.min()))
            y = np.pad(y, pad)
        # augmentation: mirror medio-lateral (array axis 2 = x), intensity scale/shift
        if self.rng.random() < 0.5:
            x, y = x[:, :, ::-1], y[:, :, ::-1]
        x = x * self.rng.uniform(0.9, 1.1) + self.rng.uniform(-0.1, 0.1)
        return np.ascontiguousarray(x), np.ascontiguousarray(y)


# ---------------------------------------------------------------------------------------------- loss


def deep_supervision_loss(outputs, target, loss_fn, weights):
    """Weighted sum over resolutions; targets resized nearest-neighbour to each output."""
    import torch
    import torch.nn.functional as F

    if isinstance(outputs, torch.Tensor):
        return loss_fn(outputs, target)
    w = np.asarray(weights[: len(outputs)], float)
    w = w / w.sum()
    total = 0.0
    for wi, out in zip(w, outputs):
        t = target if out.shape[2:] == target.shape[2:] else F.interpolate(target.float(), size=out.shape[2:], mode="nearest")
        total = total + float(wi) * loss_fn(out, t)
    return total


# ---------------------------------------------------------------------------------------------- training


def _seed_everything(seed: int):
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(train_cases: list[tuple[str, str]], val_cases: list[tuple[str, str]], out_dir: str | os.PathLike,
          cfg: TrainConfig, device: str = "cpu") -> Path:
    """Train and write ``checkpoint.pt``, ``metrics.csv`` and ``config.yaml`` into ``out_dir``.

    Resumes from ``checkpoint_last.pt`` when it exists and matches ``cfg``.
    """
    import torch
    import yaml
    from monai.losses import DiceCELoss

    from kneeflow.inference import Segmenter
    from kneeflow.models import build, load_checkpoint, n_parameters, save_checkpoint

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _seed_everything(cfg.seed)
    dev = torch.device(device)
    net = build({**cfg.arch, "out_channels": cfg.num_classes}).to(dev)
    log.info("model %s: %s parameters", cfg.arch.get("name"), f"{n_parameters(net):,d}")
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    layout = check_layout(cfg.layout) if cfg.layout else layout_of(read_volume(train_cases[0][0]))
    meta = {
        "arch": {**cfg.arch, "out_channels": cfg.num_classes},
        "layout": layout,
        "label_convention": cfg.label_convention,
        "patch_size": list(cfg.patch_size),
        "spacing": list(cfg.spacing) if cfg.spacing else None,
        "normalisation": "zscore",
        "num_classes": cfg.num_classes,
        "medial_lateral": cfg.medial_lateral,
        "train_config": json.loads(json.dumps(asdict(cfg))),
    }
    # resuming is only right for the same config and the same training/validation cases
    meta["train_cases"] = [[str(i), str(lbl)] for i, lbl in train_cases]
    meta["val_cases"] = [[str(x) for x in case] for case in val_cases]
    cfg_key = json.dumps([meta["train_config"], meta["train_cases"], meta["val_cases"]], sort_keys=True)
    start_epoch = 0
    last = out / "checkpoint_last.pt"
    # the running table lives beside checkpoint_last.pt (Snakemake removes declared outputs before a rerun)
    metrics_path = out / "metrics_last.csv"
    rng = np.random.default_rng(cfg.seed)
    if last.exists():
        state, lmeta = load_checkpoint(last)
        lkey = json.dumps([lmeta["train_config"], lmeta.get("train_cases"), lmeta.get("val_cases")], sort_keys=True)
        if lkey == cfg_key and metrics_path.exists():
            net.load_state_dict(state)
            opt_state = torch.load(out / "optimizer_last.pt", weights_only=True)
            opt.load_state_dict(opt_state["optimizer"])
            torch.set_rng_state(opt_state["torch_rng"])
            rng.bit_generator.state = json.loads(opt_state["numpy_rng"])
            start_epoch = int(lmeta["epoch"]) + 1
            log.info("resuming from %s after epoch %d", last, start_epoch - 1)
        else:
            log.warning("%s was written with another config; starting over", last)
    if start_epoch == 0 and metrics_path.exists():
        metrics_path.unlink()

    t0 = time.perf_counter()
    cases = [read_case(i, lbl, cfg.spacing, layout)[:2] for i, lbl in train_cases]
    if cfg.medial_lateral == "side":
        from kneeflow.postprocess import MEDIAL_LATERAL

        for _, lab in cases:
            for med, lat in MEDIAL_LATERAL:
                lab[lab == lat] = med
    elif cfg.medial_lateral != "model":
        raise ValueError(f"medial_lateral must be 'side' or 'model', got {cfg.medial_lateral!r}")
    sampler = PatchSampler(cases, cfg.patch_size, cfg.foreground_fraction, rng)
    log.info("loaded %d training cases in %.1f s", len(cases), time.perf_counter() - t0)
    total_iters = cfg.epochs * cfg.iterations_per_epoch
    use_amp = cfg.amp and dev.type == "cuda"
    labels = sorted(v for v in cfg.label_convention.values() if 0 < v < cfg.num_classes)
    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        losses = []
        te = time.perf_counter()
        for it in range(cfg.iterations_per_epoch):
            step = epoch * cfg.iterations_per_epoch + it
            for g in opt.param_groups:
                g["lr"] = cfg.lr * (1 - step / total_iters) ** 0.9
            batch = [sampler.sample() for _ in range(cfg.batch_size)]
            x = torch.from_numpy(np.stack([b[0] for b in batch])[:, None]).to(dev)
            y = torch.from_numpy(np.stack([b[1] for b in batch])[:, None].astype(np.int64)).to(dev)
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=use_amp):
                outs = net(x)
                loss = deep_supervision_loss(outs, y, loss_fn, cfg.ds_weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
            opt.step()
            losses.append(float(loss.detach()))
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "lr": opt.param_groups[0]["lr"],
               "seconds": time.perf_counter() - te}
        # validation: whole volumes through the same sliding-window predictor as inference
        net.eval()
        seg = Segmenter(net, {**meta, "epoch": epoch}, device=device, mirror=False)
        dices = {c: [] for c in labels}
        validate = (epoch + 1) % max(1, cfg.val_every) == 0 or epoch == cfg.epochs - 1
        for img_p, lab_p, *side in val_cases if validate else []:
            # with the knee's side, medial/lateral as inference assigns them (flips make them ambiguous)
            side = side[0] if side and side[0] in ("left", "right") and cfg.medial_lateral == "side" else None
            pred, ref = seg.predict_arrays(img_p, lab_p, side)
            for c, d in dice(pred, ref, labels).items():
                dices[c].append(d)
        names = {v: k for k, v in cfg.label_convention.items()}
        for c in labels:
            row[f"val_dice_{names[c]}"] = float(np.nanmean(dices[c])) if dices[c] else float("nan")
        _append_metrics(metrics_path, row)
        save_checkpoint(last, net.state_dict(), {**meta, "epoch": epoch})
        with atomic_path(out / "optimizer_last.pt") as opt_tmp:
            torch.save({"optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                        "numpy_rng": json.dumps(rng.bit_generator.state)}, opt_tmp)
        log.info("epoch %d/%d  loss %.4f  %s  (%.1f s)", epoch + 1, cfg.epochs, row["train_loss"],
                 " ".join(f"{k[9:]}={v:.3f}" for k, v in row.items() if k.startswith("val_dice_")), row["seconds"])
    final = out / "checkpoint.pt"
    save_checkpoint(final, net.state_dict(), {**meta, "epoch": cfg.epochs - 1})
    with atomic_path(out / "metrics.csv") as tmp:
        tmp.write_bytes(metrics_path.read_bytes())
    (out / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(meta)), sort_keys=True))
    return final


def _append_metrics(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) and math.isfinite(v) else v) for k, v in row.items()})
