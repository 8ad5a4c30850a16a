"""Soak: many synthetic knees with ~10 % bad inputs through the workflow with --keep-going.

    .venv/bin/python benchmarks/soak.py [--knees 200] [--spacing 1.5] [--segment] [--out DIR]

Every good knee must complete and every bad one must fail alone with its one-line message. With
--segment, a tiny model is trained first and the batched segmentation jobs log their resident memory
after every scan; the script reports whether it stays flat. Prints a table and writes soak.json.
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def make_inputs(data: Path, n: int, spacing: float, rng) -> tuple[list[dict], dict]:
    import SimpleITK as sitk

    from kneeflow import phantom

    rows, bad = [], {}
    kinds = ["truncated", "allzero", "empty", "unknownlabels", "geometry"]
    for i in range(n):
        s = f"soak{i:03d}"
        d = data / s
        side = "left" if i % 2 else "right"
        ph = phantom.synthesize(1000 + i, side, float(rng.uniform(0, 1)), spacing=spacing, mese=True)
        phantom.write(ph, d)
        row = {"sample": s, "side": side, "image": f"../../data/{s}/image.nii.gz", "echoes": f"../../data/{s}/echoes.nii.gz",
               "labels": f"../../data/{s}/labels.nii.gz", "label_convention": "canonical", "split": "train",
               "reference_labels": f"../../data/{s}/labels.nii.gz"}
        if i % 10 == 9:  # 10 % bad
            kind = kinds[(i // 10) % len(kinds)]
            bad[s] = kind
            if kind == "truncated":
                raw = (d / "image.nii.gz").read_bytes()
                (d / "image.nii.gz").write_bytes(raw[: len(raw) // 2])
            elif kind == "allzero":
                img = sitk.ReadImage(str(d / "image.nii.gz"))
                z = sitk.Image(img.GetSize(), sitk.sitkInt16)
                z.CopyInformation(img)
                sitk.WriteImage(z, str(d / "image.nii.gz"))
            elif kind == "empty":
                (d / "image.nii.gz").write_bytes(b"")
            elif kind == "unknownlabels":
                lab = sitk.ReadImage(str(d / "labels.nii.gz"))
                a = sitk.GetArrayFromImage(lab)
                a[0, 0, 0] = 99
                o = sitk.GetImageFromArray(a)
                o.CopyInformation(lab)
                sitk.WriteImage(o, str(d / "labels.nii.gz"))
            elif kind == "geometry":
                lab = sitk.ReadImage(str(d / "labels.nii.gz"))
                lab.SetOrigin(tuple(x + 3 for x in lab.GetOrigin()))
                sitk.WriteImage(lab, str(d / "labels.nii.gz"))
        rows.append(row)
    return rows, bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--knees", type=int, default=200)
    ap.add_argument("--spacing", type=float, default=1.5)
    ap.add_argument("--segment", action="store_true", help="also train a tiny model and segment every knee")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "soak"))
    a = ap.parse_args()
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    (out / "run" / "config").mkdir(parents=True)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    rows, bad = make_inputs(out / "data", a.knees, a.spacing, rng)
    t_gen = time.perf_counter() - t0
    if a.segment:
        # the model trains on good knees only (one bad training scan would block training, by design:
        # a model is never trained on a partial set); bad knees are in the segmented (test) split
        n_train = max(4, a.knees // 10)
        good_ids = [r["sample"] for r in rows if r["sample"] not in bad][:n_train]
        for r in rows:
            r["split"] = "train" if r["sample"] in good_ids else "test"
    cols = ["sample", "side", "image", "echoes", "labels", "label_convention", "split", "reference_labels"]
    (out / "run" / "config" / "samples.tsv").write_text(
        "\n".join(["\t".join(cols)] + ["\t".join(str(r.get(c, "")) for c in cols) for r in rows]) + "\n")
    shutil.copy(ROOT / "config" / "config.yaml", out / "run" / "config" / "config.yaml")
    cfg = {"samples": "config/samples.tsv", "allowed_roots": [".."],
           "thickness": {"activate": True, "ray_in_mm": 2.5, "ray_out_mm": 10.0, "femoral_subregions": False},
           "mesh": {"bone_smooth_var_mm2": 0.5, "cartilage_smooth_var_mm2": 0.3125,
                    "n_points": {"femur": 4000, "tibia": 4000, "patella": 2000}}}
    if a.segment:
        cfg["segmentation"] = {"activate": True, "batch_size": 50, "validation_cases": 1, "mirror": False, "models": {
            "tiny": {"train": {"arch": {"name": "mednext_custom", "init_filters": 4, "blocks_down": [1, 1, 1, 1],
                                        "blocks_bottleneck": 1, "blocks_up": [1, 1, 1, 1], "deep_supervision": True},
                               "patch_size": [32, 32, 32], "epochs": 1, "iterations_per_epoch": 5, "threads": 1}}}}
    (out / "run" / "config" / "soak.yaml").write_text(yaml.safe_dump(cfg))
    t1 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(out / "run"),
                        "--configfile", "config/soak.yaml", "--cores", "2", "--keep-going"],
                       cwd=out / "run", capture_output=True, text=True)
    t_run = time.perf_counter() - t1
    res = out / "run" / "results"
    text = r.stdout + r.stderr
    good = [x["sample"] for x in rows if x["sample"] not in bad]
    done = [s for s in good if (res / s / "thickness.csv").exists() and (res / s / "t2.csv").exists()]
    failed_alone = {s: bool(re.search(rf"ERROR \w+ sample={s}: ", text)) for s in bad}
    partial = [str(p) for p in res.rglob("*.part*")]
    rss = []
    for lg in sorted((res / "logs" / "segment").glob("*.log")) if a.segment else []:
        rss += [float(m) for m in re.findall(r"rss_mb=([0-9.]+)", lg.read_text())]
    summary = {
        "knees": a.knees, "bad": len(bad), "good": len(good), "good_completed": len(done),
        "bad_failed_with_message": int(sum(failed_alone.values())), "partial_files": len(partial),
        "generate_seconds": round(t_gen, 1), "workflow_seconds": round(t_run, 1),
        "seconds_per_knee": round(t_run / a.knees, 2),
        "segment_rss_mb_first_last_max": [rss[0], rss[-1], max(rss)] if rss else None,
    }
    print(f"{'metric':32s} value")
    for k, v in summary.items():
        print(f"{k:32s} {v}")
    (out / "soak.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
