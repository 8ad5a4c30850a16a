"""Train small Keras 2 models with DOSMA's I/O (one per plane) on synthetic knees and save them as .h5.

    python tests/dosma_train.py OUT_DIR

Run as its own process by tests/test_dosma.py: TensorFlow and torch are never loaded into one
process (the workflow runs DOSMA models in their own environment too).
"""

import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kneeflow import phantom  # noqa: E402
from kneeflow.dosma import PLANES  # noqa: E402
from kneeflow.orientation import reorient  # noqa: E402

#: model input (H, W) per plane: smaller than the public 512s, and not square where the public ones are not
SIZES = {"sagittal": (64, 64), "coronal": (48, 64), "axial": (48, 64)}
SPACING = 1.5


def knee(seed, spacing=SPACING):
    ph = phantom.synthesize(seed, "right" if seed % 2 else "left", 0.3, spacing=spacing, mese=False)

    def img(a, dtype):
        im = sitk.GetImageFromArray(np.ascontiguousarray(a.transpose(2, 1, 0)).astype(dtype))
        im.SetSpacing(ph.spacing)
        im.SetOrigin(ph.origin)
        return im

    return img(ph.image, np.float32), img(ph.labels, np.uint8)


def slices(image, labels, plane):
    """DOSMA's input for one plane (z-scored, cubic-resized slices) and the matching label slices."""
    from skimage.transform import resize

    layout, axis = PLANES[plane]
    vol = sitk.GetArrayFromImage(reorient(image, layout)).transpose(2, 1, 0)
    lab = sitk.GetArrayFromImage(reorient(labels, layout)).transpose(2, 1, 0)
    vol = (vol - vol.mean()) / vol.std()
    x, y = np.moveaxis(vol, axis, 0), np.moveaxis(lab, axis, 0)
    h, w = SIZES[plane]
    x = resize(x, (len(x), h, w), order=3, mode="edge", preserve_range=True, anti_aliasing=False)
    y = resize(y, (len(y), h, w), order=0, mode="edge", preserve_range=True, anti_aliasing=False)
    return x[..., None].astype(np.float32), y.astype(np.int64)


def small_unet(k, h, w):
    inp = k.Input((h, w, 1))
    a = k.layers.Conv2D(16, 3, padding="same", activation="relu")(inp)
    a = k.layers.Conv2D(16, 3, padding="same", activation="relu")(a)
    b = k.layers.MaxPooling2D()(a)
    b = k.layers.Conv2D(32, 3, padding="same", activation="relu")(b)
    b = k.layers.Conv2D(32, 3, padding="same", activation="relu")(b)
    u = k.layers.UpSampling2D()(b)
    c = k.layers.Concatenate()([a, u])
    c = k.layers.Conv2D(16, 3, padding="same", activation="relu")(c)
    out = k.layers.Conv2D(10, 1, activation="softmax")(c)
    return k.Model(inp, out)


def main(out: Path) -> None:
    import tensorflow as tf
    import tf_keras

    # seeded and deterministic kernels: the same models on every run (without them the test's Dice
    # varied between runs: one fresh clone got femur 0.70 where others passed 0.75)
    tf_keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_intra_op_parallelism_threads(2)
    out.mkdir(parents=True, exist_ok=True)
    knees = [knee(s) for s in (51, 52, 53)]
    for plane in ("sagittal", "coronal", "axial"):
        xs, ys = zip(*(slices(im, lab, plane) for im, lab in knees))
        m = small_unet(tf_keras, *SIZES[plane])
        m.compile(optimizer=tf_keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
        m.fit(np.concatenate(xs), np.concatenate(ys), batch_size=16, epochs=10, verbose=0, shuffle=True)
        m.save(str(out / f"{plane}_best_model.h5"))  # HDF5 (a Keras 2 full model), as DOSMA's are


if __name__ == "__main__":
    main(Path(sys.argv[1]))
