"""Training a segmentation network from the registry on (image, label map) pairs.

Patches with foreground oversampling (a third of the patches centred on a voxel of a randomly chosen
foreground class, so thin cartilage is seen often), z-score intensity normalisation, nnU-Net's
augmentations (:mod:`kneeflow.augment`: rotation, scaling, noise, blur, brightness, contrast, low
resolution, gamma, mirroring; each with its probability in the config, patch i of step s drawn from
its own seeded generator); Dice + cross-entropy, with deep supervision when the network returns several
resolutions (weights 1, 1/2, 1/4, ... normalised; targets resized nearest-neighbour); AdamW with a
poly learning-rate decay; bf16 autocast on GPU. After every epoch the state goes to
``checkpoint_last.pt`` (atomic), so a killed job resumes from the last finished epoch; ``metrics.csv``
gets one row per epoch (losses and validation Dice per label). Seeded: the same data and config give
the same weights on CPU.
"""

from __future__ import annotations

__all__ = ["BatchDiceCELoss", "PatchSampler", "TrainConfig", "deep_supervision_loss", "normalise", "patch_rng",
           "preview", "read_case", "resample_to_spacing", "train"]

import copy
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
from kneeflow.augment import Augment, region_for, augment_patch
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
    # nnU-Net's batch_dice: the Dice term's sums taken over the whole (global) batch instead of per
    # patch, so a patch that holds a sliver of a class does not weigh as much as one full of it
    dice_batch: bool = False
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
    # kneeflow.augment.Augment settings (probabilities and ranges); empty: nnU-Net's defaults
    augment: dict = field(default_factory=dict)
    # which epoch checkpoint.pt (inference, export) holds: "last" (nnU-Net's final) or "best"
    # (the validation epoch with the best mean Dice; checkpoint_best.pt is kept either way)
    keep: str = "last"
    # the weights' precision: float32, or float64 (exact comparisons: in float32 Adam turns the
    # rounding noise of gradients that are zero in exact arithmetic, e.g. biases before a
    # normalisation, into full-size steps of random sign, which change no output)
    dtype: str = "float32"
    # torch.compile the network (GPU only; ignored with a log line on CPU)
    compile: bool = False
    # channels-last (NDHWC) memory for the network and its patches: on CPU MedNeXt's depthwise
    # convolutions then run in oneDNN instead of PyTorch's slow grouped path (the demo net's step
    # 0.245 -> 0.178 s on one thread in benchmarks/train_step.py); other rounding, so other weights
    channels_last: bool = False


# ---------------------------------------------------------------------------------------------- data


class PatchSampler:
    """Training patches: a case at random, centred on a voxel of a random foreground class with
    probability ``fg_fraction`` (else anywhere), read with the margin the spatial augmentations need
    and augmented (:mod:`kneeflow.augment`). Every draw comes from the generator passed to
    :meth:`sample`, so patch ``i`` of step ``s`` is the same whichever process draws it."""

    def __init__(self, cases, patch, fg_fraction, aug: Augment | None = None):
        self.cases, self.patch, self.fg = cases, np.asarray(patch), fg_fraction
        self.aug = aug or Augment()
        self.region = region_for(self.patch, self.aug)
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

    def sample(self, rng: np.random.Generator):
        i = int(rng.integers(len(self.cases)))
        img, lab = self.cases[i]
        shape = np.asarray(img.shape)
        if rng.random() < self.fg and self.fg_index[i]:
            c = rng.choice(list(self.fg_index[i]))
            pts = self.fg_index[i][c]
            centre = pts[rng.integers(len(pts))]
        else:
            centre = np.array([rng.integers(s) for s in shape])
        # the patch's centre stays inside the scan by half a patch where it can (as without margins)
        centre = np.clip(centre, np.minimum(self.patch // 2, shape // 2), np.maximum(shape - (self.patch - self.patch // 2), shape // 2))
        lo = centre - self.region // 2
        src = tuple(slice(max(a, 0), min(a + r, s)) for a, r, s in zip(lo, self.region, shape))
        dst = tuple(slice(sl.start - a, sl.stop - a) for sl, a in zip(src, lo))
        background = float(img.min())
        x = np.full(self.region, background, np.float32)
        y = np.zeros(self.region, lab.dtype)
        x[dst], y[dst] = img[src], lab[src]
        return augment_patch(x, y, self.patch, self.aug, rng, background=background)


def patch_rng(seed: int, step: int, index: int) -> np.random.Generator:
    """The generator of patch ``index`` of training step ``step``: independent of the process count
    and of where a resumed run starts."""
    return np.random.default_rng([seed, step, index])


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


class BatchDiceCELoss:
    """Dice over the whole batch (nnU-Net's ``batch_dice``; foreground classes, smooth 1e-5) plus
    cross-entropy: MONAI's ``DiceCELoss(batch=True, include_background=False)``. With ``distributed``
    the Dice sums are all-reduced over the ranks (with their gradients), so that data-parallel ranks
    train on the global batch's Dice, as one process with the whole batch would; the cross-entropy is
    a mean, which DDP's gradient averaging already makes the global batch's."""

    def __init__(self, distributed: bool = False, smooth: float = 1e-5):
        self.distributed, self.smooth = distributed, smooth

    def __call__(self, logits, target):
        import torch
        import torch.nn.functional as F

        t = target[:, 0].long()
        if logits.dtype not in (torch.float32, torch.float64):  # autocast's half precision
            logits = logits.float()
        p = torch.softmax(logits, 1)[:, 1:]
        onehot = F.one_hot(t, logits.shape[1]).movedim(-1, 1)[:, 1:].to(p.dtype)
        dims = [0, *range(2, p.ndim)]
        sums = torch.stack([(p * onehot).sum(dims), onehot.sum(dims), p.sum(dims)])
        if self.distributed:
            from torch.distributed.nn.functional import all_reduce

            sums = all_reduce(sums)
        dice = 1.0 - (2.0 * sums[0] + self.smooth) / (sums[1] + sums[2] + self.smooth)
        return dice.mean() + F.cross_entropy(logits, t)


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

    Resumes from ``checkpoint_last.pt`` when it exists and matches ``cfg``. Started by ``torchrun`` or
    ``srun`` with several processes (:mod:`kneeflow.distributed`), trains data-parallel: ``batch_size``
    is the global batch, each rank draws its share, rank 0 validates and writes. The validation epoch
    with the best mean Dice is kept as ``checkpoint_best.pt``; ``checkpoint.pt`` (what inference and
    export use) is the last epoch's, or the best's with ``keep: best``.
    """
    import torch
    import yaml
    from monai.losses import DiceCELoss

    from kneeflow import distributed
    from kneeflow.inference import Segmenter
    from kneeflow.models import build, load_checkpoint, n_parameters, save_checkpoint

    if cfg.keep not in ("last", "best"):
        raise ValueError(f"keep must be 'last' or 'best', got {cfg.keep!r}")
    if cfg.dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {cfg.dtype!r}")
    dtype = getattr(torch, cfg.dtype)
    world = distributed.world_from_env()
    device = distributed.init(world, device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _seed_everything(cfg.seed)
    dev = torch.device(device)
    net = build({**cfg.arch, "out_channels": cfg.num_classes}).to(dev, dtype)
    memory_format = torch.channels_last_3d if cfg.channels_last else torch.contiguous_format
    net = net.to(memory_format=memory_format)
    log.info("model %s: %s parameters", cfg.arch.get("name"), f"{n_parameters(net):,d}")
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.dice_batch:
        loss_fn = BatchDiceCELoss(distributed=world.size > 1)
    else:
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
    if last.exists():
        state, lmeta = load_checkpoint(last)
        lkey = json.dumps([lmeta["train_config"], lmeta.get("train_cases"), lmeta.get("val_cases")], sort_keys=True)
        if lkey == cfg_key and metrics_path.exists():
            net.load_state_dict(state)
            opt_state = torch.load(out / "optimizer_last.pt", weights_only=True)
            opt.load_state_dict(opt_state["optimizer"])
            torch.set_rng_state(opt_state["torch_rng"])
            start_epoch = int(lmeta["epoch"]) + 1
            log.info("resuming from %s after epoch %d", last, start_epoch - 1)
        else:
            log.warning("%s was written with another config; starting over", last)
    best_path = out / "checkpoint_best.pt"
    best = -math.inf
    if start_epoch and best_path.exists():
        best = float(load_checkpoint(best_path)[1].get("val_dice_mean", -math.inf))
    distributed.barrier(world)  # every rank has decided whether to resume before rank 0 starts over
    if start_epoch == 0 and world.main:
        for stale in (metrics_path, best_path):
            stale.unlink(missing_ok=True)
    model = net
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
    if cfg.compile:
        if dev.type == "cuda":
            model = torch.compile(model)
        else:
            log.info("compile: torch.compile is used on GPUs only; training uncompiled on %s", dev)

    t0 = time.perf_counter()
    cases = [read_case(i, lbl, cfg.spacing, layout)[:2] for i, lbl in train_cases]
    if cfg.medial_lateral == "side":
        from kneeflow.postprocess import MEDIAL_LATERAL

        for _, lab in cases:
            for med, lat in MEDIAL_LATERAL:
                lab[lab == lat] = med
    elif cfg.medial_lateral != "model":
        raise ValueError(f"medial_lateral must be 'side' or 'model', got {cfg.medial_lateral!r}")
    sampler = PatchSampler(cases, cfg.patch_size, cfg.foreground_fraction, Augment.from_config(cfg.augment))
    log.info("loaded %d training cases in %.1f s", len(cases), time.perf_counter() - t0)
    total_iters = cfg.epochs * cfg.iterations_per_epoch
    use_amp = cfg.amp and dev.type == "cuda"
    labels = sorted(v for v in cfg.label_convention.values() if 0 < v < cfg.num_classes)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        losses = []
        te = time.perf_counter()
        for it in range(cfg.iterations_per_epoch):
            step = epoch * cfg.iterations_per_epoch + it
            for g in opt.param_groups:
                g["lr"] = cfg.lr * (1 - step / total_iters) ** 0.9
            batch = [sampler.sample(patch_rng(cfg.seed, step, i)) for i in world.share(cfg.batch_size)]
            x = torch.from_numpy(np.stack([b[0] for b in batch])[:, None]).to(dev, dtype).contiguous(memory_format=memory_format)
            y = torch.from_numpy(np.stack([b[1] for b in batch])[:, None].astype(np.int64)).to(dev)
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=use_amp):
                outs = model(x)
                loss = deep_supervision_loss(outs, y, loss_fn, cfg.ds_weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # DDP: gradients averaged over the ranks = the global batch's
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
            opt.step()
            losses.append(loss.detach().float())
        losses = torch.stack(losses)
        if world.size > 1:
            torch.distributed.all_reduce(losses)
            losses = losses / world.size
        losses = losses.cpu().numpy()
        if not world.main:
            continue
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "lr": opt.param_groups[0]["lr"],
               "seconds": time.perf_counter() - te}
        # validation: whole volumes through the same sliding-window predictor as inference
        net.eval()
        seg = Segmenter(net if dtype == torch.float32 else copy.deepcopy(net).float(), {**meta, "epoch": epoch},
                        device=device, mirror=False)
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
        scores = [v for k, v in row.items() if k.startswith("val_dice_") and math.isfinite(v)]
        if validate and scores and float(np.mean(scores)) > best:
            best = float(np.mean(scores))
            save_checkpoint(best_path, net.state_dict(), {**meta, "epoch": epoch, "val_dice_mean": best})
        _append_metrics(metrics_path, row)
        save_checkpoint(last, net.state_dict(), {**meta, "epoch": epoch})
        with atomic_path(out / "optimizer_last.pt") as opt_tmp:
            torch.save({"optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state()}, opt_tmp)
        log.info("epoch %d/%d  loss %.4f  %s  (%.1f s)", epoch + 1, cfg.epochs, row["train_loss"],
                 " ".join(f"{k[9:]}={v:.3f}" for k, v in row.items() if k.startswith("val_dice_")), row["seconds"])
    final = out / "checkpoint.pt"
    if world.main:
        state, info = net.state_dict(), {**meta, "epoch": cfg.epochs - 1}
        if cfg.keep == "best" and best_path.exists():
            state, info = load_checkpoint(best_path)
        meta["inference_checkpoint"] = f"{cfg.keep}: epoch {info['epoch']}"
        meta["best_epoch"] = int(load_checkpoint(best_path)[1]["epoch"]) if best_path.exists() else None
        log.info("checkpoint.pt holds the %s epoch (%d); best validation epoch: %s", cfg.keep, info["epoch"],
                 meta["best_epoch"])
        save_checkpoint(final, state, {**info, "inference_checkpoint": meta["inference_checkpoint"]})
        with atomic_path(out / "metrics.csv") as tmp:
            tmp.write_bytes(metrics_path.read_bytes())
        (out / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(meta)), sort_keys=True))
    distributed.barrier(world)
    distributed.shutdown(world)
    return final


def preview(train_cases: list[tuple[str, str]], cfg: TrainConfig, out_dir: str | os.PathLike, n: int = 8) -> Path:
    """Write ``n`` training patches as the sampler and augmentations make them (``patch<i>_image.nii.gz``
    / ``_labels.nii.gz`` and ``preview.png``: each patch's middle slice with its labels) to look at
    before training; the same patches as training's first step(s)."""
    import SimpleITK as sitk

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layout = check_layout(cfg.layout) if cfg.layout else layout_of(read_volume(train_cases[0][0]))
    cases = [read_case(i, lbl, cfg.spacing, layout)[:2] for i, lbl in train_cases]
    sampler = PatchSampler(cases, cfg.patch_size, cfg.foreground_fraction, Augment.from_config(cfg.augment))
    fig, axes = plt.subplots(2, n, figsize=(2 * n, 4.4), squeeze=False)
    for i in range(n):
        x, y = sampler.sample(patch_rng(cfg.seed, i // cfg.batch_size, i % cfg.batch_size))
        for arr, name in ((x, "image"), (y, "labels")):
            sitk.WriteImage(sitk.GetImageFromArray(arr), str(out / f"patch{i}_{name}.nii.gz"))
        mid = x.shape[2] // 2
        axes[0, i].imshow(x[:, :, mid], cmap="gray", origin="lower")
        axes[1, i].imshow(x[:, :, mid], cmap="gray", origin="lower")
        axes[1, i].imshow(np.ma.masked_equal(y[:, :, mid], 0), cmap="tab10", vmin=0, vmax=10, alpha=0.5,
                          origin="lower", interpolation="nearest")
        for ax in axes[:, i]:
            ax.set_axis_off()
        axes[0, i].set_title(f"patch {i}", fontsize=8)
    fig.suptitle(f"augmented training patches {tuple(cfg.patch_size)} (mid-sagittal slice; labels below)", fontsize=9)
    fig.savefig(out / "preview.png", dpi=100)
    plt.close(fig)
    return out / "preview.png"


def _append_metrics(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) and math.isfinite(v) else v) for k, v in row.items()})
