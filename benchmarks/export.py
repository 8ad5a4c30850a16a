"""Export: conversion time and size per architecture; onnxruntime vs PyTorch inference on the same input.

    .venv/bin/python benchmarks/export.py [--archs basicunet unet mednext_s ...] [--size 64]

For each architecture (random weights) the ONNX and CoreML fp32/fp16 conversions are timed, the
artifacts' sizes recorded, and onnxruntime (CPU; CUDA when available) is timed against eager PyTorch
on the same input, side by side in one run. Prints a table and writes export.json.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KW = {
    "basicunet": {"features": (16, 16, 32, 64, 128, 16)},
    "unet": {"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2)},
    "mednext_s": {},
    "swinunetr": {"feature_size": 24},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=["basicunet", "unet", "mednext_s", "swinunetr"])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "export"))
    a = ap.parse_args()
    import onnxruntime as ort
    import torch

    from kneeflow import export, models

    providers = ["CUDAExecutionProvider"] if "CUDAExecutionProvider" in ort.get_available_providers() else []
    providers.append("CPUExecutionProvider")
    rows = []
    for name in a.archs:
        torch.manual_seed(0)
        arch = {"name": name, "out_channels": 10, **KW.get(name, {})}
        net = models.build(arch).eval()
        with tempfile.TemporaryDirectory() as td:
            rec = export.export_segmentation(net, {"arch": arch, "patch_size": [a.size] * 3}, td, name,
                                             size=(a.size,) * 3, measure_fp16=False)
            x = torch.randn(1, 1, a.size, a.size, a.size)
            with torch.no_grad():
                net(x)
                t0 = time.perf_counter()
                for _ in range(a.repeats):
                    net(x)
            torch_s = (time.perf_counter() - t0) / a.repeats
            _, ort_s = export.run_onnx(Path(td) / f"{name}.onnx", {"image": x.numpy()}, providers=providers,
                                       repeats=a.repeats)
        art = rec["artifacts"]
        rows.append({"architecture": name, "parameters": models.n_parameters(net), "input": f"{a.size}^3",
                     "onnx_convert_s": art["onnx"]["seconds"], "coreml_fp32_convert_s": art["coreml_fp32"]["seconds"],
                     "coreml_fp16_convert_s": art["coreml_fp16"]["seconds"],
                     "onnx_mb": round(art["onnx"]["size_bytes"] / 2**20, 1),
                     "coreml_fp32_mb": round(art["coreml_fp32"]["size_bytes"] / 2**20, 1),
                     "coreml_fp16_mb": round(art["coreml_fp16"]["size_bytes"] / 2**20, 1),
                     "torch_cpu_s": round(torch_s, 4), "onnxruntime_s": round(ort_s, 4),
                     "onnxruntime_provider": providers[0], "torch_over_onnxruntime": round(torch_s / ort_s, 2),
                     "onnx_max_abs": art["onnx"]["max_abs"]})
        print(rows[-1], flush=True)
    hdr = ["architecture", "parameters", "onnx_convert_s", "coreml_fp32_convert_s", "coreml_fp16_convert_s", "onnx_mb",
           "coreml_fp16_mb", "torch_cpu_s", "onnxruntime_s", "torch_over_onnxruntime"]
    print(" | ".join(hdr))
    for r in rows:
        print(" | ".join(str(r[h]) for h in hdr))
    Path(a.out).mkdir(parents=True, exist_ok=True)
    Path(a.out, "export.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
