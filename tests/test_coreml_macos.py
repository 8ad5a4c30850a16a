"""CoreML prediction parity: runs on macOS only (.github/workflows/macos-coreml.yml).

On Linux every test here skips with the reason printed: coremltools converts on Linux but its
predictions need macOS's CoreML framework.
"""

import platform

import numpy as np
import pytest

from kneeflow import export, models

pytestmark = pytest.mark.skipif(platform.system() != "Darwin",
                                reason="CoreML prediction needs macOS (runs in .github/workflows/macos-coreml.yml)")


def _trained_tiny_mednext():
    """A small MedNeXt trained for a few steps on blobs, so its logits are decisive (not random ties)."""
    import torch

    torch.manual_seed(0)
    net = models.build({"name": "mednext_custom", "out_channels": 3, "init_filters": 8, "blocks_down": [1, 1, 1, 1],
                        "blocks_bottleneck": 1, "blocks_up": [1, 1, 1, 1]})
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(60):
        x = torch.nn.functional.avg_pool3d(torch.randn(2, 1, 32, 32, 32), 5, stride=1, padding=2) * 4
        y = (x > 0.3).long()[:, 0] + (x > 1.0).long()[:, 0]
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def test_segmentation_coreml_predictions_match_torch(tmp_path):
    import torch

    net = _trained_tiny_mednext()
    meta = {"arch": {"name": "mednext_custom"}, "labels": {"a": 1, "b": 2}, "spacing": [1, 1, 1], "patch_size": [32] * 3}
    rec = export.export_segmentation(net, meta, tmp_path, "tiny", size=(32, 32, 32))
    x = torch.nn.functional.avg_pool3d(torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(5)),
                                       5, stride=1, padding=2) * 4
    with torch.no_grad():
        ref = net(x).numpy()
    ct = export.coremltools()

    for prec in ("fp32", "fp16"):
        ml = ct.models.MLModel(str(tmp_path / f"tiny_{prec}.mlpackage"), compute_units=ct.ComputeUnit.CPU_ONLY)
        got = ml.predict({"image": x.numpy()})["logits"]
        c = export.compare(ref, got)
        print(prec, c)
        if prec == "fp32":
            assert c["max_rel"] <= 1e-4
        else:
            assert c["argmax_agreement_pct"] >= 99.9
    assert rec["artifacts"]["coreml_fp32"]["prediction"].startswith("run: macOS")


def test_minilm_coreml_fp32_matches_sentence_transformers(tmp_path):
    rec = export.export_minilm(tmp_path)
    ct = export.coremltools()
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    src = export.minilm_dir()
    st = SentenceTransformer(str(src), device="cpu")
    st.max_seq_length = 128
    ref = st.encode(export.MINILM_SENTENCES, convert_to_numpy=True)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    ml = ct.models.MLModel(str(tmp_path / "minilm_fp32.mlpackage"), compute_units=ct.ComputeUnit.CPU_ONLY)
    worst = 0.0
    for i, s in enumerate(export.MINILM_SENTENCES):
        for pad in ("max_length", False):  # [1, 128] and the flexible length
            e = tok([s], padding=pad, truncation=True, max_length=128, return_tensors="np")
            out = ml.predict({"input_ids": e["input_ids"].astype(np.int32),
                              "attention_mask": e["attention_mask"].astype(np.int32)})["sentence_embedding"]
            worst = max(worst, float(np.abs(out[0] - ref[i]).max()))
    print("MiniLM CoreML fp32 max abs", worst, rec["artifacts"]["onnx"]["max_abs"])
    assert worst <= 1e-5
