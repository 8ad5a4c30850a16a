"""Seconds per bone for NSM fitting: one knee at a time vs batched, public recipe vs faster settings.

    .venv/bin/python benchmarks/nsm_fit.py [--train 12] [--fit 8] [--device cpu]

A cohort of synthetic femurs (tests/fixtures.py: synthetic_femur) trains the demo's NSM recipe; then the
held-out femurs are fitted with (a) the public recipe, 2000 Adam iterations, 8000 points, one knee per
optimisation, (b) the same batched (all knees in one optimisation), (c) batched with early stopping
(patience 200), (d) batched, early stop, 4000 points. Each row reports seconds per bone and the
reconstruction's ASSD to the input (mm), so speed is read against accuracy. Prints a table and
writes nsm_fit.json.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

import sys

from kneeflow import shape, surface

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from fixtures import synthetic_femur  # noqa: E402 - test data shared with the tests


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=12)
    ap.add_argument("--fit", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "nsm_fit"))
    a = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    n = a.train + a.fit
    knees, sides = {}, {}
    for i in range(n):
        s = f"k{i:02d}"
        sides[s] = "left" if i % 3 == 1 else "right"
        knees[s] = {"femur": synthetic_femur(700 + i, sides[s], round((i % 13) / 12, 3))}
    ids = sorted(knees)
    test = ids[a.train:]
    cfg = {"decoder": "deepsdf", "surfaces": ["femur"], "latent_size": 16, "hidden": 64, "n_layers": 6, "fourier": 4,
           "skip": 3, "steps": 1200, "points_per_step": 1024, "samples_per_shape": 20000, "seed": 0}
    t0 = time.perf_counter()
    model = shape.train({s: knees[s] for s in ids[: a.train]}, sides, cfg, device=a.device)
    train_s = time.perf_counter() - t0
    settings = [
        ("public recipe, one knee at a time", False, dict(iterations=2000, points=8000, patience=10**9)),
        ("public recipe, batched", True, dict(iterations=2000, points=8000, patience=10**9)),
        ("batched, early stop", True, dict(iterations=2000, points=8000, patience=200)),
        ("batched, early stop, 4000 points", True, dict(iterations=2000, points=4000, patience=200)),
    ]
    rows = []
    for name, batched, kw in settings:
        t0 = time.perf_counter()
        if batched:
            res = shape.fit(model, {s: knees[s] for s in test}, sides, device=a.device, **kw)
        else:
            res = {}
            for s in test:
                res.update(shape.fit(model, {s: knees[s]}, sides, device=a.device, **kw))
        secs = time.perf_counter() - t0
        assd = []
        for s in test:
            pts, tris = shape.reconstruct(model, res[s].latent, res[s].alignment, resolution=160, device=a.device)
            ip, it = surface.mesh_arrays(knees[s]["femur"])
            assd.append(surface.surface_distance(ip, it, pts, tris)["assd"])
        rows.append({"setting": name, "device": a.device, "knees": len(test), "s_per_bone": round(secs / len(test), 2),
                     "mean_iterations": float(np.mean([res[s].iterations for s in test])),
                     "assd_mean_mm": round(float(np.mean(assd)), 3), "assd_max_mm": round(float(np.max(assd)), 3)})
        print(rows[-1], flush=True)
    print(f"\nNSM training: {train_s:.1f} s ({a.train} femurs, {cfg['steps']} steps) on {a.device}")
    print(f"{'setting':36s} {'s/bone':>7s} {'iters':>6s} {'ASSD mean':>10s} {'ASSD max':>9s}")
    for r in rows:
        print(f"{r['setting']:36s} {r['s_per_bone']:7.2f} {r['mean_iterations']:6.0f} {r['assd_mean_mm']:10.3f} "
              f"{r['assd_max_mm']:9.3f}")
    Path(a.out).mkdir(parents=True, exist_ok=True)
    Path(a.out, "nsm_fit.json").write_text(json.dumps({"train_seconds": train_s, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
