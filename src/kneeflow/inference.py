"""Segmentation inference: one loaded model, many scans.

The scan is resampled to the model's spacing, z-scored, predicted with a Gaussian-weighted sliding
window (MONAI), optionally averaged with its medio-lateral mirror, and the class probabilities are
resampled back onto the scan's own grid before the argmax, so the label map has exactly the input's
geometry. The scan is first put in the layout the network was trained in and the labels are brought
back exactly (:func:`kneeflow.preprocessing.predict_in_layout`). The label map is then cleaned
(:func:`kneeflow.postprocess.clean_labels`: by default the bones keep their largest component). On a GPU out-of-memory the window results are
accumulated on the CPU instead (logged).
"""

from __future__ import annotations

__all__ = ["BONE_LABELS", "OnnxNet", "Segmenter",
           "onnx_segmenter", "sliding_window"]

import logging

import numpy as np

from kneeflow.labels import CANONICAL
from kneeflow.postprocess import assign_medial_lateral, clean_labels

log = logging.getLogger(__name__)

BONE_LABELS = (CANONICAL["femur"], CANONICAL["tibia"], CANONICAL["patella"])


class Segmenter:
    """A loaded network and its metadata (see :func:`kneeflow.models.load_model`)."""

    def __init__(self, net, meta: dict, device: str = "cpu", mirror: bool = True, overlap: float = 0.5,
                 sw_batch_size: int = 2, clean: str = "bones"):
        import torch

        self.torch = torch
        self.clean = clean  # the label map's clean-up (kneeflow.postprocess.clean_labels)
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.meta = meta
        # a network trained channels-last (train.channels_last) is also run so: on CPU its depthwise
        # convolutions take oneDNN's path (the demo net's window 0.049 -> 0.037 s on one thread)
        cl = isinstance(net, torch.nn.Module) and (meta.get("train_config") or {}).get("channels_last")
        self.memory_format = torch.channels_last_3d if cl else torch.contiguous_format
        if cl:
            self.net = self.net.to(memory_format=self.memory_format)
        self.mirror = mirror
        self.overlap = overlap
        self.sw_batch_size = sw_batch_size

    @classmethod
    def from_checkpoint(cls, path, sha256: str | None = None, **kw):
        from kneeflow.models import load_model

        net, meta = load_model(path, sha256)
        return cls(net, meta, **kw)

    def head(self, t):
        """The network's full-resolution output (the first head under deep supervision)."""
        out = self.net(t.contiguous(memory_format=self.memory_format))
        return out[0] if isinstance(out, (tuple, list)) else out

    def _logits(self, arr: np.ndarray) -> np.ndarray:
        """(C, z, y, x) softmax probabilities for a z-scored (z, y, x) array."""
        torch = self.torch

        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)[None, None]).to(self.device)

        def run(inp, device):
            return sliding_window(inp, tuple(self.meta["patch_size"]), self.head, step=1.0 - self.overlap,
                                  batch=self.sw_batch_size, out_device=device)

        with torch.inference_mode():
            try:
                probs = torch.softmax(run(x, self.device), 1)
                if self.mirror:
                    probs = 0.5 * (probs + torch.softmax(run(torch.flip(x, dims=[4]), self.device), 1).flip(4))
            except torch.cuda.OutOfMemoryError:
                log.warning("GPU out of memory for a %s volume: accumulating windows on the CPU", tuple(arr.shape))
                torch.cuda.empty_cache()
                probs = torch.softmax(run(x, torch.device("cpu")), 1)
                if self.mirror:
                    probs = 0.5 * (probs + torch.softmax(run(torch.flip(x, dims=[4]), torch.device("cpu")), 1).flip(4))
        return probs[0].float().cpu().numpy()

    def predict(self, image, side: str | None = None):
        """Label map (SimpleITK, uint8, canonical labels) on ``image``'s own grid.

        The scan is first reoriented to the layout the network was trained in (``meta["layout"]``,
        recorded by training and export) and the labels brought back onto the scan's grid, so a knee
        stored with permuted or flipped axes is segmented as the network learned it.
        With ``side`` ("left"/"right") medial and lateral tibial cartilage and menisci are assigned by
        which side of the tibial midline they lie on (:func:`assign_medial_lateral`).
        """
        from kneeflow.orientation import predict_in_layout

        return predict_in_layout(lambda im: self._predict(im, side), image, self.meta.get("layout"))

    def _predict(self, image, side):
        import SimpleITK as sitk

        from kneeflow.preprocessing import normalise, resample_to_spacing

        img = sitk.Cast(image, sitk.sitkFloat32)
        work = resample_to_spacing(img, self.meta["spacing"], sitk.sitkLinear) if self.meta.get("spacing") else img
        probs = self._logits(normalise(sitk.GetArrayFromImage(work)))
        if work is not img:
            chans = []
            for c in range(probs.shape[0]):
                pc = sitk.GetImageFromArray(probs[c])
                pc.CopyInformation(work)
                chans.append(sitk.GetArrayFromImage(sitk.Resample(pc, img, sitk.Transform(), sitk.sitkLinear, 0.0)))
            probs = np.stack(chans)
        lab = clean_labels(np.argmax(probs, axis=0).astype(np.uint8), self.clean)
        if side is not None:
            lab = assign_medial_lateral(lab, img, side)
        out = sitk.GetImageFromArray(lab)
        out.CopyInformation(img)
        return out

    def predict_arrays(self, image_path: str, labels_path: str, side: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Prediction and reference arrays on the image's grid (validation)."""
        import SimpleITK as sitk

        from kneeflow import io

        pred = self.predict(io.read_volume(image_path), side)
        ref = io.read_volume(labels_path, what="label map")
        return sitk.GetArrayFromImage(pred), sitk.GetArrayFromImage(ref)


class OnnxNet:
    """An exported ONNX segmentation network behind the interface :class:`Segmenter` uses (torch in/out)."""

    def __init__(self, path, device: str = "cpu"):
        import onnxruntime as ort

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else \
            ["CPUExecutionProvider"]
        so = ort.SessionOptions()
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), so, providers=providers)
        self.input = self.session.get_inputs()[0].name

    def to(self, device):
        return self

    def eval(self):
        return self

    def __call__(self, x):
        import torch

        out = self.session.run(None, {self.input: x.detach().cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(out).to(x.device)


def onnx_segmenter(path, device: str = "cpu", **kw) -> Segmenter:
    """A :class:`Segmenter` running an exported ONNX model; its metadata (labels, spacing, patch size,
    normalisation, the layout it was trained in) is read from the file, as kneeflow's export writes it."""
    import json

    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    missing = [k for k in ("patch_size", "spacing") if k not in props]
    if missing:
        raise ValueError(f"{path}: ONNX model lacks kneeflow metadata {missing} (export it with kneeflow)")
    meta = {k: json.loads(props[k]) for k in ("patch_size", "spacing", "labels") if k in props}
    meta["layout"] = props.get("layout") if props.get("layout") not in (None, "", "null") else None
    meta["medial_lateral"] = props.get("medial_lateral", "model")
    if props.get("random_weights") == "true":
        log.warning("%s carries RANDOM weights (an architecture-only export)", path)
    return Segmenter(OnnxNet(path, device), meta, device="cpu", **kw)


def sliding_window(x, patch, predictor, step: float = 0.5, batch: int = 2, out_device=None, sums_dtype=None,
                   weight_scale: float = 1.0):
    """Gaussian-weighted mean of ``predictor``'s logits over overlapping windows of ``x`` (1, 1, z, y, x).

    The windows and their weights are nnU-Net's own (``compute_steps_for_sliding_window``,
    ``compute_gaussian``), and so is the zero padding of a volume smaller than a window, so that one
    network gives the same labels here as in nnUNetPredictor. Windows run ``batch`` at a
    time on ``x``'s device; the sums are kept on ``out_device`` (the CPU when the GPU ran out of
    memory for a whole volume). Returns (1, C, z, y, x) on ``out_device``.

    The sums are float32. nnUNetPredictor keeps them in float16 with weights scaled to 10;
    ``sums_dtype=torch.float16, weight_scale=10`` does the same (to compare, benchmarks/segment.py).
    """
    import torch

    out_device = out_device or x.device
    shape = x.shape[2:]
    pad = [max(0, p - s) for p, s in zip(patch, shape)]
    if any(pad):
        # centred, as nnU-Net pads: the lower half rounded down
        x = torch.nn.functional.pad(x, [v for d in reversed(pad) for v in (d // 2, d - d // 2)])
    full = x.shape[2:]
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

    sums_dtype = sums_dtype or torch.float32
    g = compute_gaussian(tuple(patch), value_scaling_factor=weight_scale, dtype=sums_dtype, device=x.device)
    g_out = g.to(out_device)
    steps = compute_steps_for_sliding_window(tuple(full), tuple(patch), step)
    corners = [(a, b, c) for a in steps[0] for b in steps[1] for c in steps[2]]
    acc = weight = None
    for i in range(0, len(corners), batch):
        group = corners[i:i + batch]
        tiles = torch.cat([x[:, :, a:a + patch[0], b:b + patch[1], c:c + patch[2]] for a, b, c in group])
        logits = predictor(tiles) * g
        if acc is None:
            acc = torch.zeros((1, logits.shape[1], *full), dtype=sums_dtype, device=out_device)
            weight = torch.zeros(full, dtype=sums_dtype, device=out_device)
        logits = logits.to(out_device)
        for (a, b, c), t in zip(group, logits):
            acc[0, :, a:a + patch[0], b:b + patch[1], c:c + patch[2]] += t
            weight[a:a + patch[0], b:b + patch[1], c:c + patch[2]] += g_out
    acc /= weight
    acc = acc.float()
    if any(pad):
        acc = acc[:, :, pad[0] // 2:pad[0] // 2 + shape[0], pad[1] // 2:pad[1] // 2 + shape[1],
                  pad[2] // 2:pad[2] // 2 + shape[2]]
    return acc


