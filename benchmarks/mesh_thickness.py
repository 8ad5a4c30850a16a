"""Meshes + thickness + regions: kneeflow vs the reference pipeline's pymskt call sequence, side by side.

    .venv/bin/python benchmarks/mesh_thickness.py [LABELMAP] [--convention pymskt] [--out results/benchmarks/mesh_thickness.json]

Both run on the same label map on this machine, each in its own process (wall time and peak RSS).
Default input: the real DESS label map in ../shared/data. Prints a table and writes JSON.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT.parent / "shared" / "data" / "pymskt" / "SAG_3D_DESS_RIGHT_bones_cart_men_fib-label.nrrd"
PAIRS = {"femoral_cartilage": "femur:{femoral_cartilage}", "medial_tibial_cartilage": "tibia:{medial_tibial_cartilage}",
         "lateral_tibial_cartilage": "tibia:{lateral_tibial_cartilage}", "patellar_cartilage": "patella:{patellar_cartilage}"}


def ours(path: str, convention: str) -> dict:
    sys.path.insert(0, str(ROOT / "src"))
    import SimpleITK as sitk

    from kneeflow.labels import get_convention, remap_to_canonical
    from kneeflow.thickness import measure_knee

    t0 = time.perf_counter()
    img = sitk.ReadImage(path)
    lab = sitk.GetImageFromArray(remap_to_canonical(sitk.GetArrayFromImage(img), get_convention(convention)))
    lab.CopyInformation(img)
    _, table = measure_knee(lab, "bench")
    means = table[table.stat == "mean"].set_index("region").value_mm.to_dict()
    return {"seconds": time.perf_counter() - t0, "means": means,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("labels", nargs="?", default=str(DEFAULT))
    ap.add_argument("--convention", default="pymskt")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "mesh_thickness.json"))
    ap.add_argument("--_ours", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._ours:
        print(json.dumps(ours(a.labels, a.convention)))
        return
    sys.path.insert(0, str(ROOT / "src"))
    from kneeflow.labels import get_convention

    conv = get_convention(a.convention)
    r_ours = json.loads(subprocess.run([sys.executable, __file__, a.labels, "--convention", a.convention, "--_ours"],
                                       check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    ref_json = Path(a.out).with_name("pymskt_reference.json")
    ref_json.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "_pymskt_reference.py"), a.labels, str(ref_json), a.convention],
                   check=True, capture_output=True, cwd=ROOT)
    ref_wall = time.perf_counter() - t0
    ref = json.loads(ref_json.read_text())
    rows = []
    for region, key in PAIRS.items():
        k = key.format(**conv)
        rows.append({"region": region, "kneeflow_mm": r_ours["means"][region], "pymskt_mm": ref["regions"][k]["mean"],
                     "abs_diff_mm": abs(r_ours["means"][region] - ref["regions"][k]["mean"])})
    result = {
        "input": a.labels,
        "kneeflow_seconds": r_ours["seconds"], "pymskt_seconds": ref["seconds"]["total"],
        "pymskt_process_seconds": ref_wall,
        "speedup": ref["seconds"]["total"] / r_ours["seconds"],
        "kneeflow_peak_rss_mb": r_ours["peak_rss_mb"], "pymskt_peak_rss_mb": ref["peak_rss_mb"],
        "regions": rows,
    }
    print(f"{'region':28s} {'kneeflow mm':>12s} {'pymskt mm':>10s} {'|diff|':>8s}")
    for r in rows:
        print(f"{r['region']:28s} {r['kneeflow_mm']:12.4f} {r['pymskt_mm']:10.4f} {r['abs_diff_mm']:8.4f}")
    print(f"\nwall time (meshes + thickness + regions, all bones): kneeflow {result['kneeflow_seconds']:.1f} s, "
          f"pymskt {result['pymskt_seconds']:.1f} s -> {result['speedup']:.1f}x")
    print(f"peak RSS: kneeflow {result['kneeflow_peak_rss_mb']:.0f} MB, pymskt {result['pymskt_peak_rss_mb']:.0f} MB")
    Path(a.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
