"""DOSMA's 2-D Keras knee models (``.h5``, TensorFlow 2 / Keras 2) as a segmentation back end.

As the public knee pipeline runs them: the scan is put in the model's plane layout (sagittal and
coronal: DOSMA's ("LR", "SI", "AP") = orientation code ``RIP``; axial: ("LR", "AP", "SI") = ``RPI``),
z-scored over the whole volume, cut into slices across the plane's axis (sagittal: LR; coronal: AP;
axial: SI), each slice resized with cubic interpolation to the model's input size (from the model;
the public sizes are 512x512 sagittal and 160x512 coronal and axial), predicted (softmax over 10
classes: background, then pc, fc, mtc, ltc, medial meniscus, lateral meniscus, femur, tibia, patella,
the same values as kneeflow's labels), the class probabilities resized back (linear) to the slice's
own size, the argmax taken, and the labels put back on the scan's grid exactly.

Several planes may be fused with SimpleITK's MultiLabelSTAPLE; before fusing, the coronal model's
label 1 (patellar cartilage) and the axial model's labels 3-6 (tibial cartilage, menisci) are set to
background, as the public code does.

The Keras 2 API comes from ``tf_keras`` (or ``tensorflow.keras`` under TensorFlow < 2.16), loaded with
``compile=False``. TensorFlow runs in the workflow's own environment for these models
(``envs/dosma.yaml``), apart from the torch stack.
"""

from __future__ import annotations

__all__ = ["DEFAULT_SIZES", "PLANES", "DosmaError", "DosmaSegmenter", "fuse_staple", "load_keras", "parse_entry"]

import logging
import os
from pathlib import Path

import numpy as np

from kneeflow.orientation import predict_in_layout

log = logging.getLogger(__name__)

#: plane -> (orientation code of the layout, the axis slices are taken across in that layout)
PLANES = {"sagittal": ("RIP", 0), "coronal": ("RIP", 2), "axial": ("RPI", 2)}
#: the public models' input sizes (used when a model's input size is not fixed)
DEFAULT_SIZES = {"sagittal": (512, 512), "coronal": (160, 512), "axial": (160, 512)}
#: labels each plane's model does not contribute to a fusion (the public code's choice)
DROPPED_IN_FUSION = {"coronal": (1,), "axial": (3, 4, 5, 6)}


class DosmaError(ValueError):
    """A DOSMA model entry or file that cannot be used; the message names the file and the problem."""


def keras():
    """The Keras 2 API: ``tf_keras`` (TensorFlow >= 2.16 ships Keras 3) or ``tensorflow.keras``."""
    try:
        import tf_keras

        return tf_keras
    except ImportError:
        pass
    try:
        import tensorflow as tf
    except ImportError:
        raise DosmaError("DOSMA models need TensorFlow and the Keras 2 API (envs/dosma.yaml: tensorflow-cpu, "
                         "tf-keras)") from None
    if int(tf.__version__.split(".")[1]) >= 16 and tf.__version__.startswith("2."):
        raise DosmaError(f"TensorFlow {tf.__version__} ships Keras 3, which does not load DOSMA's Keras 2 models; "
                         "install tf-keras") from None
    return tf.keras


def load_keras(path: str | os.PathLike):
    """Load a full Keras model from ``.h5`` with ``compile=False``; a clear error for a bad file."""
    p = Path(path)
    if not p.is_file():
        raise DosmaError(f"{p}: DOSMA model file not found")
    k = keras()
    try:
        return k.models.load_model(str(p), compile=False)
    except Exception as e:  # noqa: BLE001 - h5py / Keras errors for truncated or foreign files
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise DosmaError(f"{p}: not a loadable Keras model file ({type(e).__name__}: {first})") from None


def parse_entry(entry: dict) -> tuple[list[tuple[str, str]], str | None]:
    """A model entry's DOSMA part -> ([(file, plane)], fuse). ``dosma`` is one ``{file, plane}`` or a
    list of them; several need ``fuse: staple`` beside it. A ``sha256`` beside a file is verified."""
    from kneeflow.checksum import sha256

    value, fuse = entry.get("dosma"), entry.get("fuse")
    items = value if isinstance(value, list) else [value]
    out = []
    for it in items:
        if not isinstance(it, dict) or "file" not in it:
            raise DosmaError(f"a DOSMA model needs `file` (and `plane`): got {it!r}")
        plane = it.get("plane", "sagittal")
        if plane not in PLANES:
            raise DosmaError(f"{it['file']}: unknown plane {plane!r}; one of {sorted(PLANES)}")
        if it.get("sha256") and Path(it["file"]).is_file():
            got = sha256(it["file"])
            if got != it["sha256"].lower():
                raise DosmaError(f"{it['file']}: sha256 mismatch: expected {it['sha256']}, got {got}")
        out.append((str(it["file"]), plane))
    if len(out) > 1 and fuse != "staple":
        raise DosmaError(f"{len(out)} DOSMA models need `fuse: staple` to combine them")
    if fuse not in (None, "staple"):
        raise DosmaError(f"unknown fusion {fuse!r} (staple)")
    return out, fuse


class DosmaSegmenter:
    """One or several loaded DOSMA Keras models (one per plane), many scans."""

    def __init__(self, models: list[tuple[str, str]], fuse: str | None = None, batch_size: int = 8):
        self.models = [(load_keras(f), plane, f) for f, plane in models]
        self.fuse = fuse
        self.batch_size = batch_size
        self.meta = {"medial_lateral": "model"}  # the public models label medial and lateral themselves
        for m, plane, f in self.models:
            log.info("DOSMA %s model %s: input %s, output %s", plane, f, m.input_shape, m.output_shape)

    def predict(self, image):
        """Canonical label map (SimpleITK, uint8) on ``image``'s own grid."""
        import SimpleITK as sitk

        maps = []
        for model, plane, _ in self.models:
            layout, axis = PLANES[plane]
            lab = predict_in_layout(lambda im: self._predict_plane(model, plane, axis, im), image, layout)
            maps.append((lab, plane))
        if len(maps) == 1:
            return maps[0][0]
        out = fuse_staple(maps)
        out.CopyInformation(image)
        return sitk.Cast(out, sitk.sitkUInt8)

    def _predict_plane(self, model, plane: str, axis: int, image):
        """Labels of one model on an image already in its plane's layout."""
        import SimpleITK as sitk
        from skimage.transform import resize

        vol = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32)).transpose(2, 1, 0)  # (i, j, k)
        vol = (vol - vol.mean()) / max(float(vol.std()), 1e-6)
        slices = np.moveaxis(vol, axis, 0)  # (n, a, b)
        n, a, b = slices.shape
        shape = model.input_shape
        channels_last = shape[-1] == 1
        hw = shape[1:3] if channels_last else shape[2:4]
        h, w = (int(hw[0]), int(hw[1])) if None not in hw else DEFAULT_SIZES[plane]
        labels = np.zeros((n, a, b), dtype=np.uint8)
        for s in range(0, n, self.batch_size):
            chunk = slices[s:s + self.batch_size]
            x = resize(chunk, (len(chunk), h, w), order=3, mode="edge", preserve_range=True, anti_aliasing=False)
            x = x[..., None] if channels_last else x[:, None]
            p = np.asarray(model.predict(x.astype(np.float32), verbose=0, batch_size=self.batch_size))
            if p.ndim != 4:
                raise DosmaError(f"DOSMA {plane} model: expected (slices, H, W, classes) output, got {p.shape}")
            if channels_last:  # (n, H, W, C) -> (n, C, H, W)
                p = np.moveaxis(p, -1, 1)
            back = resize(p, (len(chunk), p.shape[1], a, b), order=1, mode="edge", preserve_range=True,
                          anti_aliasing=False)
            labels[s:s + len(chunk)] = np.argmax(back, axis=1).astype(np.uint8)
        arr = np.moveaxis(labels, 0, axis).transpose(2, 1, 0)  # back to SimpleITK's (k, j, i)
        out = sitk.GetImageFromArray(np.ascontiguousarray(arr))
        out.CopyInformation(image)
        return out


def fuse_staple(maps: list[tuple[object, str]]):
    """MultiLabelSTAPLE of per-plane label maps (same grid), after dropping the labels the public code
    drops per plane; undecided voxels are background."""
    import SimpleITK as sitk

    imgs = []
    for lab, plane in maps:
        arr = sitk.GetArrayFromImage(lab).astype(np.uint8)
        for v in DROPPED_IN_FUSION.get(plane, ()):
            arr[arr == v] = 0
        im = sitk.GetImageFromArray(arr)
        im.CopyInformation(lab)
        imgs.append(im)
    f = sitk.MultiLabelSTAPLEImageFilter()
    f.SetLabelForUndecidedPixels(0)
    return f.Execute(imgs)
