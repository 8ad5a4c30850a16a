"""Our sliding-window inference vs nnUNetPredictor on the same nnU-Net network and volume.

    .venv/bin/python benchmarks/segment.py --model-folder <nnU-Net results folder> [--shape 160 384 384]
    .venv/bin/python benchmarks/segment.py --train-tiny   # trains the tests' tiny nnU-Net first (CPU)

The network and weights of an nnU-Net v2 model folder are run (1) by nnUNetPredictor (its own
preprocessing, Gaussian sliding window, resampling and export) and (2) by kneeflow's Segmenter (the
same network in kneeflow.inference.sliding_window: nnU-Net's windows and Gaussian weights, batched;
z-score; probability resampling), on the same
synthetic volume at the model's spacing, side by side in one process. Mirroring is off for both (it
multiplies nnU-Net's work by 8 and ours by 2). Reports seconds per scan, the speed ratio and the
Dice between the two label maps. On a GPU add --device cuda; the issue's target (>= 3x faster,
Dice >= 0.999) is a GPU target. Prints a table and writes segment.json.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from fixtures import train_tiny  # noqa: E402 - test data shared with the tests


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-folder")
    ap.add_argument("--train-tiny", action="store_true")
    ap.add_argument("--shape", type=int, nargs=3, default=[64, 160, 160], help="z y x voxels (knee: 160 384 384)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=2, help="windows per forward pass (ours)")
    ap.add_argument("--volume", choices=["phantom", "noise"], default="phantom",
                    help="a synthetic knee padded to --shape (default), or smooth noise")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "segment"))
    a = ap.parse_args()
    import SimpleITK as sitk
    import torch

    from kneeflow import models, nnunet
    from kneeflow.inference import Segmenter

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(a.model_folder) if a.model_folder else train_tiny(out / "tiny") if a.train_tiny else None
    if folder is None:
        raise SystemExit("give --model-folder or --train-tiny")
    plans = json.loads((folder / "plans.json").read_text())
    conf = plans["configurations"]["3d_fullres"]
    spacing_zyx = conf["spacing"]
    # a volume of the requested size at the model's spacing (no resampling on either side): a synthetic
    # knee (what the tiny model was trained on) padded with its background to the size, or smooth noise
    rng = np.random.default_rng(0)
    from scipy import ndimage

    if a.volume == "phantom":
        from kneeflow import phantom

        knee = phantom.synthesize(7, "right", 0.3, spacing=float(spacing_zyx[0]), mese=False).image
        knee = np.ascontiguousarray(knee.transpose(2, 1, 0)).astype(np.float32)  # (x, y, z) -> (z, y, x)
        vol = np.full(a.shape, float(np.median(knee[:2])), np.float32)
        sl = tuple(slice(0, min(n, k)) for n, k in zip(a.shape, knee.shape))
        vol[sl] = knee[sl]
        vol += rng.normal(0, 1e-3, size=vol.shape).astype(np.float32)
    else:
        vol = ndimage.gaussian_filter(rng.normal(size=a.shape).astype(np.float32), 2) * 50 + 100
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))

    ref = nnunet.NnunetSegmenter(folder, folds=[0], device=a.device, mirror=False)
    t0 = time.perf_counter()
    lab_nn = ref.predict_array(vol, spacing_zyx)
    t_nn = time.perf_counter() - t0

    ds = json.loads((folder / "dataset.json").read_text())
    arch = {"name": "nnunet", "plans": str(folder / "plans.json"), "configuration": "3d_fullres",
            "out_channels": len(ds["labels"])}
    net = models.build(arch)
    with torch.serialization.safe_globals(nnunet._numpy_data_globals()):
        ck = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    net.load_state_dict(ck["network_weights"])
    meta = {"patch_size": conf["patch_size"], "spacing": None, "arch": arch}
    ours = Segmenter(net, meta, device=a.device, mirror=False, overlap=0.5, sw_batch_size=a.batch)
    t0 = time.perf_counter()
    probs = ours._logits((vol - vol.mean()) / vol.std())
    lab_ours = probs.argmax(0)
    t_ours = time.perf_counter() - t0
    # the same windows with nnUNetPredictor's float16 sums (weights x 10): what is left of the
    # difference comes from its rounding
    from kneeflow.inference import sliding_window

    with torch.inference_mode():
        x = torch.from_numpy(((vol - vol.mean()) / vol.std()).astype(np.float32)[None, None]).to(a.device)
        lab_fp16 = sliding_window(x, tuple(conf["patch_size"]), ours.head, batch=a.batch, sums_dtype=torch.float16,
                                  weight_scale=10).argmax(1)[0].cpu().numpy()
    dice, per_label = [], {}
    for c in np.unique(np.concatenate([np.unique(lab_nn), np.unique(lab_ours)])):
        if c == 0:
            continue
        x, y = lab_nn == c, lab_ours == c
        dice.append(2 * (x & y).sum() / (x.sum() + y.sum()))
        per_label[int(c)] = {"dice": round(float(dice[-1]), 5), "voxels_nnunet": int(x.sum()),
                             "voxels_differ": int((x ^ y).sum())}
    row = {"device": a.device, "shape_zyx": a.shape, "volume": a.volume, "model_folder": str(folder), "nnunet_predictor_s": round(t_nn, 2),
           "kneeflow_s": round(t_ours, 2), "speedup": round(t_nn / t_ours, 2),
           "voxel_agreement_pct": round(float((lab_nn == lab_ours).mean() * 100), 4),
           "mean_dice_vs_nnunet": round(float(np.mean(dice)), 5) if dice else None, "per_label": per_label,
           "voxel_agreement_pct_with_fp16_sums": round(float((lab_nn == lab_fp16).mean() * 100), 4)}
    for k, v in row.items():
        print(f"{k:22s} {v}")
    (out / "segment.json").write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
