"""Export: CoreML-safe rewrites, ONNX/CoreML of every registry architecture, MiniLM, TotalSegmentator-style.

Each architecture test writes its row of the status table (docs/export_status/<arch>.json); the
module's teardown renders docs/export_status.md from the rows present, so the table in the docs is
produced by these tests, not by hand. CoreML predictions need macOS: here they are reported as not
run, and the macOS workflow (.github/workflows/macos-coreml.yml) runs tests/test_coreml_macos.py.
"""

import json
import platform
from pathlib import Path

import numpy as np
import pytest

from kneeflow import export, models

ROOT = Path(__file__).resolve().parents[1]
STATUS = ROOT / "docs" / "export_status"
PLAIN_PLANS = ROOT / "config" / "nnunet" / "totalseg_total_3d_fullres" / "nnUNetPlans.json"

# (registry entry, kwargs, spatial size, heavy): heavy = millions of parameters or 64^3 inputs, minutes
# each; run with `make test-heavy` (CI runs the light ones, which cover every rewrite: GroupNorm,
# InstanceNorm, ConvTranspose3d with output_padding, attention; the committed table has every row)
ARCHS = [
    ("basicunet", {"features": (8, 8, 16, 32, 64, 8)}, 32, False),
    ("unet", {"channels": (8, 16, 32, 64), "strides": (2, 2, 2)}, 32, False),
    ("unetr", {"img_size": (32, 32, 32), "feature_size": 8, "hidden_size": 96, "mlp_dim": 192, "num_heads": 4}, 32, False),
    ("swinunetr", {"feature_size": 12}, 64, True),
    ("mednext_custom", {"init_filters": 8, "blocks_down": [1, 1, 1, 1], "blocks_bottleneck": 1,
                        "blocks_up": [1, 1, 1, 1]}, 32, False),
    ("mednext_s", {}, 32, True),
    ("mednext_s_k5", {}, 32, True),
    ("mednext_b", {}, 32, True),
    ("mednext_b_k5", {}, 32, True),
    ("mednext_m", {}, 32, True),
    ("mednext_m_k5", {}, 32, True),
    ("mednext_l", {}, 32, True),
    ("mednext_l_k5", {}, 32, True),
    ("nnunet", {"plans": str(PLAIN_PLANS), "out_channels": 4}, 64, True),
]


@pytest.fixture(scope="module", autouse=True)
def status_table():
    yield
    rows = [json.loads(p.read_text()) for p in sorted(STATUS.glob("*.json"))]
    if not rows:
        return
    order = {a[0]: i for i, a in enumerate(ARCHS)}
    rows.sort(key=lambda r: order.get(r["architecture"], 99))
    lines = [
        "# Export status per registry architecture",
        "",
        "Written by `tests/test_export.py` (each row by the test of that architecture; do not edit by hand).",
        "Random weights, one input of the given size (standard normal). ONNX runs in onnxruntime (CPU);",
        "CoreML converts here (Linux) and predicts only on macOS (`.github/workflows/macos-coreml.yml`);",
        "the fp16 column is PyTorch fp16 on the CPU vs fp32, the error the fp16 package should show.",
        "",
        "| architecture | parameters | input | ONNX max abs | ONNX argmax % | dynamic axes | CoreML fp32 | CoreML fp16 | "
        "torch fp16 max abs | rewrites | tested on |",
        "|---|---:|---|---:|---:|---|---|---|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['architecture']} | {r['parameters']:,} | {r['input']} | {r['onnx_max_abs']:.2e} | "
            f"{r['onnx_argmax_pct']:.3f} | {r['dynamic']} | {r['coreml_fp32']} | {r['coreml_fp16']} | "
            f"{r['torch_fp16_max_abs']} | {r['rewrites']} | {r['host']} |")
    (ROOT / "docs" / "export_status.md").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------- rewrites


def test_coreml_safe_rewrites_are_exact_and_replace_the_ops():
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv3d(1, 8, 3, padding=1),
        torch.nn.GroupNorm(4, 8),
        torch.nn.InstanceNorm3d(8, affine=True),
        torch.nn.ConvTranspose3d(8, 4, 3, stride=2, padding=1, output_padding=1),
    ).eval()
    x = torch.randn(2, 1, 6, 7, 8)
    safe, applied = export.coreml_safe(net, x)
    assert len(applied) == 3
    kinds = [type(m).__name__ for m in safe]
    assert "GroupNorm" not in kinds and "InstanceNorm3d" not in kinds and "ConvTranspose3d" not in kinds
    with torch.no_grad():
        a, b = net(x), safe(x)
    assert a.shape == b.shape == (2, 4, 12, 14, 16)
    assert float((a - b).abs().max()) < 1e-5
    # the rewrite holds on other sizes too (odd sizes, the crop is per input)
    x2 = torch.randn(1, 1, 5, 9, 4)
    with torch.no_grad():
        assert float((net(x2) - safe(x2)).abs().max()) < 1e-5


def test_rewrite_check_refuses_an_inexact_rewrite(monkeypatch):
    """The equality check is real: a rewrite that changes the numbers is refused."""
    import torch

    good = export._flat_norm_cls()

    class WrongGroupNorm(good[0]):
        def forward(self, x):
            return super().forward(x) * 1.001

    monkeypatch.setattr(export, "_flat_norm_cls", lambda: (WrongGroupNorm, good[1], good[2]))
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 1), torch.nn.GroupNorm(2, 4)).eval()
    with pytest.raises(export.ExportError, match="not exact"):
        export.coreml_safe(net, torch.randn(1, 1, 4, 4, 4))


def test_conversion_failure_names_the_op_and_writes_nothing(tmp_path):
    import torch

    class Upsample3d(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.interpolate(x, scale_factor=2, mode="trilinear")

    p = tmp_path / "bad_fp32.mlpackage"
    with pytest.raises(export.ExportError, match=r"CoreML fp32 conversion failed at op '.*upsample|interpolate"):
        export.export_coreml(Upsample3d(), torch.randn(1, 1, 4, 4, 4), p)
    assert not p.exists() and not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------- registry


def _row(name, net, size, rec, host):
    a = rec["artifacts"]
    fp16 = a["coreml_fp16"].get("torch_fp16_vs_fp32", {}).get("max_abs")
    return {"architecture": name, "parameters": models.n_parameters(net), "input": f"1x1x{size}^3",
            "onnx_max_abs": a["onnx"]["max_abs"], "onnx_argmax_pct": a["onnx"]["argmax_agreement_pct"],
            "dynamic": "batch, spatial" if len(a["onnx"]["dynamic_axes"].get("image", [])) > 1
            else ("batch" if a["onnx"]["dynamic_axes"] else "none (fixed shape)"),
            "coreml_fp32": "converts; " + a["coreml_fp32"]["prediction"].split(":")[0],
            "coreml_fp16": "converts; " + a["coreml_fp16"]["prediction"].split(":")[0],
            "torch_fp16_max_abs": f"{fp16:.2e}" if fp16 is not None else "not measured",
            "rewrites": len(rec["rewrites"]), "host": host}


@pytest.mark.parametrize("name,kw,size", [pytest.param(*a[:3], marks=[pytest.mark.heavy] if a[3] else [], id=a[0])
                                          for a in ARCHS])
def test_registry_architecture_exports(tmp_path, name, kw, size):
    import torch

    torch.manual_seed(0)
    arch = {"name": name, "out_channels": 4, **kw}
    net = models.build(arch).eval()
    meta = {"arch": arch, "labels": {"background": 0, "a": 1, "b": 2, "c": 3}, "spacing": [1, 1, 1],
            "patch_size": [size] * 3, "spatial_divisor": 32 if name in ("swinunetr", "nnunet") else 16}
    # UNETR's positional embedding and SwinUNETR's window partition fix the traced shapes
    dynamic = {"unetr": "none", "swinunetr": "none"}.get(name, "spatial")
    big = models.n_parameters(net) > 20_000_000
    rec = export.export_segmentation(net, meta, tmp_path, name, size=(size,) * 3, dynamic=dynamic,
                                     measure_fp16=not big)
    a = rec["artifacts"]
    assert a["onnx"]["max_abs"] <= 1e-4, a["onnx"]
    assert a["onnx"]["argmax_agreement_pct"] >= 99.9
    if dynamic != "none":
        # the larger second input: float32 rounding grows with depth (1.6e-5 relative for the 6-stage
        # PlainConvUNet); a broken dynamic axis errs by O(1). Same bound as export.require_parity.
        assert a["onnx"]["dynamic_check"]["max_rel"] <= 1e-4
    for prec in ("fp32", "fp16"):
        pkg = tmp_path / f"{name}_{prec}.mlpackage"
        assert pkg.is_dir() and (pkg / "Manifest.json").exists()
        assert a[f"coreml_{prec}"]["ops"], "no ops listed"
        if platform.system() != "Darwin":
            assert a[f"coreml_{prec}"]["prediction"] == export.NOT_ON_LINUX
    # CoreML-unsafe ops are gone from the converted program
    assert not any("upsample" in op or "resize" in op for op in a["coreml_fp32"]["ops"])
    # metadata inside the ONNX file
    import onnx

    props = {p.key: p.value for p in onnx.load(str(tmp_path / f"{name}.onnx")).metadata_props}
    assert json.loads(props["labels"])["c"] == 3 and props["random_weights"] == "false"
    STATUS.mkdir(parents=True, exist_ok=True)
    (STATUS / f"{name}.json").write_text(json.dumps(_row(name, net, size, rec, platform.system()), indent=1) + "\n")


# ---------------------------------------------------------------------------------------------- MiniLM


@pytest.mark.slow
def test_minilm_onnx_matches_sentence_transformers_and_converts(tmp_path):
    rec = export.export_minilm(tmp_path)
    on = rec["artifacts"]["onnx"]
    assert rec["sentences"] >= 10
    assert on["max_abs"] <= 1e-5 and on["unpadded_max_abs"] <= 1e-5
    assert rec["torch_module_vs_sentence_transformers"]["max_abs"] <= 1e-5
    for f in ("tokenizer.json", "vocab.txt", "minilm.onnx"):
        assert (tmp_path / f).exists()
    for prec in ("fp32", "fp16"):
        assert (tmp_path / f"minilm_{prec}.mlpackage" / "Manifest.json").exists()
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "minilm.onnx"), providers=["CPUExecutionProvider"])
    ins = {i.name: i for i in sess.get_inputs()}
    assert set(ins) == {"input_ids", "attention_mask"} and ins["input_ids"].type == "tensor(int32)"
    out = sess.get_outputs()[0]
    assert out.name == "sentence_embedding" and out.shape[-1] == 384
    emb = sess.run(None, {"input_ids": np.array([[101, 7592, 102]], dtype=np.int32),
                          "attention_mask": np.ones((1, 3), dtype=np.int32)})[0]
    assert abs(float(np.linalg.norm(emb)) - 1.0) < 1e-5


# ---------------------------------------------------------------------------------------------- TotalSegmentator-style


@pytest.mark.heavy
def test_totalsegmentator_style_network_exports_with_random_weights_labelled(tmp_path):
    cfg = {"plans": str(PLAIN_PLANS), "n_classes": 105, "export_size": [64, 64, 64], "measure_fp16": False}
    rec = export.export_nnunet(cfg, tmp_path, "totalseg_total")
    assert rec["random_weights"] is True
    net = models.build({"name": "nnunet", "plans": str(PLAIN_PLANS), "out_channels": 105})
    stages = net.encoder.stages
    assert len(stages) == 6
    import onnx

    m = onnx.load(str(tmp_path / "totalseg_total.onnx"))
    props = {p.key: p.value for p in m.metadata_props}
    assert props["random_weights"] == "true" and "RANDOM WEIGHTS" in props["description"]
    assert rec["artifacts"]["onnx"]["max_abs"] <= 1e-4
    assert m.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 105
    assert (tmp_path / "totalseg_total_fp16.mlpackage" / "Manifest.json").exists()


def test_parity_over_tolerance_fails_the_export():
    rec = {"name": "m", "artifacts": {"onnx": {"max_abs": 2e-4}}}
    with pytest.raises(export.ExportError, match="m: onnx parity 0.0002 exceeds 0.0001"):
        export.require_parity(rec, "onnx", 1e-4)
    rec = {"name": "m", "artifacts": {"onnx": {"max_abs": 1e-6, "dynamic_check": {"max_rel": 0.3}}}}
    with pytest.raises(export.ExportError, match="dynamic-shape parity"):
        export.require_parity(rec, "onnx", 1e-4)
    with pytest.raises(export.ExportError, match="no coreml_fp32 artifact"):
        export.require_parity(rec, "coreml_fp32", 1e-4)
    export.require_parity({"name": "m", "artifacts": {"onnx": {"max_abs": 5e-5}}}, "onnx", 1e-4)
    # the relative part scales with the outputs: 1.7e-4 on logits up to 30 passes 1e-4 + 1e-5 x 30 ...
    big = {"name": "m", "artifacts": {"onnx": {"max_abs": 1.7e-4, "ref_max_abs": 30.0}}}
    export.require_parity(big, "onnx", 1e-4, 1e-5)
    # ... but not an absolute bound alone, nor the same error on outputs of ~1
    with pytest.raises(export.ExportError, match=r"exceeds 0.0001 \+ 1e-05 x 1 = 0.00011"):
        export.require_parity({"name": "m", "artifacts": {"onnx": {"max_abs": 1.7e-4, "ref_max_abs": 1.0}}},
                              "onnx", 1e-4, 1e-5)
    with pytest.raises(export.ExportError):
        export.require_parity(big, "onnx", 1e-4)
