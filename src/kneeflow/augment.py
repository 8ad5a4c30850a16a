"""Patch augmentation for segmentation training, after nnU-Net's recipe (Isensee et al., Nat Methods
2021, and its default 3-D transforms).

Each transform has a probability and a range (:class:`Augment`, the training config's ``augment``):
rotation and scaling (one resampling of the patch, MONAI's ``Affine``; labels nearest-neighbour),
optional elastic deformation (MONAI's ``Rand3DElastic``), Gaussian noise, Gaussian blur (MONAI's
``GaussianSmooth``), brightness (multiplicative), contrast (about the mean, clipped to the patch's
range), simulated low resolution (down nearest-neighbour, up trilinear), gamma (on the patch rescaled
to [0, 1]) and the medio-lateral mirror. Every random draw comes from the numpy ``Generator`` passed
in, so a seeded sampler gives the same patches twice and on any number of processes.

The spatial transforms read a region around the patch's centre large enough for any rotation and the
smallest scale, so the patch is filled with image, not padding, wherever the scan has it.
"""

from __future__ import annotations

__all__ = ["Augment", "augment_patch", "region_for"]

import math
from dataclasses import asdict, dataclass, fields

import numpy as np


@dataclass
class Augment:
    """Probabilities (``*_p``) and ranges; the defaults are nnU-Net's for 3-D."""

    mirror_p: float = 0.5                       # medio-lateral mirror (array axis 2 = x)
    rotate_p: float = 0.2
    rotate_deg: float = 30.0                    # each axis, uniform in [-deg, deg]
    scale_p: float = 0.2
    scale: tuple[float, float] = (0.7, 1.4)     # one factor for all axes (> 1 zooms in)
    elastic_p: float = 0.0                      # off by default, as in nnU-Net
    elastic_sigma: tuple[float, float] = (9.0, 13.0)      # voxels
    elastic_magnitude: tuple[float, float] = (0.0, 200.0)
    noise_p: float = 0.1
    noise_variance: tuple[float, float] = (0.0, 0.1)
    blur_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)          # voxels
    brightness_p: float = 0.15
    brightness: tuple[float, float] = (0.75, 1.25)
    contrast_p: float = 0.15
    contrast: tuple[float, float] = (0.75, 1.25)
    lowres_p: float = 0.25
    lowres_zoom: tuple[float, float] = (0.5, 1.0)
    gamma_p: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)

    @classmethod
    def from_config(cls, cfg: dict | None) -> "Augment":
        """From the training config's ``augment`` mapping; an unknown key is an error naming it."""
        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        bad = sorted(set(cfg) - known)
        if bad:
            raise ValueError(f"augment: unknown settings {bad}; known: {sorted(known)}")
        for k, v in cfg.items():
            if k.endswith("_p") and not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"augment.{k} = {v}: a probability must be in [0, 1]")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @property
    def spatial(self) -> bool:
        return self.rotate_p > 0 or self.scale_p > 0 or self.elastic_p > 0


def region_for(patch, aug: Augment) -> np.ndarray:
    """The size (voxels, per axis) of the region read around a patch's centre: the patch's diagonal
    over the smallest scale (any rotation fits), or the patch itself without spatial transforms."""
    patch = np.asarray(patch)
    if not aug.spatial:
        return patch
    diag = float(np.linalg.norm(patch))
    smallest = min(aug.scale) if aug.scale_p > 0 else 1.0
    return np.maximum(patch, np.ceil(diag / smallest).astype(int) + 2)


def _affine(x, y, patch, rot, scale):
    """Rotate (radians, per axis) and scale ``x`` (linear) and ``y`` (nearest) about the centre of
    their region, and crop the centred ``patch``."""
    import torch
    from monai.transforms import Affine

    # MONAI's scale_params: > 1 magnifies the output grid's sampling step, i.e. shrinks the content
    aff = Affine(rotate_params=tuple(rot), scale_params=(1.0 / scale,) * 3, spatial_size=tuple(int(p) for p in patch),
                 padding_mode="zeros", image_only=True)
    xi = aff(torch.from_numpy(np.ascontiguousarray(x))[None], mode="bilinear")
    yi = aff(torch.from_numpy(np.ascontiguousarray(y).astype(np.float32))[None], mode="nearest")
    return np.asarray(xi[0], dtype=np.float32), np.asarray(yi[0]).round().astype(y.dtype)


def _centre_crop(a, patch):
    lo = [(s - p) // 2 for s, p in zip(a.shape, patch)]
    return a[tuple(slice(lo_, lo_ + p) for lo_, p in zip(lo, patch))]


def augment_patch(x: np.ndarray, y: np.ndarray, patch, aug: Augment, rng: np.random.Generator,
                  background: float = 0.0):
    """Augment one region (image ``x``, labels ``y``, both of the size :func:`region_for` gives,
    centred on the patch) and return the ``patch``-sized (image, labels). ``background``: the image
    value outside the scan (its minimum), used to pad."""
    patch = tuple(int(p) for p in patch)
    x = np.asarray(x, dtype=np.float32) - background  # padding with zeros then means the background
    rotate = rng.random() < aug.rotate_p
    scale = rng.random() < aug.scale_p
    rot = rng.uniform(-1, 1, 3) * math.radians(aug.rotate_deg) if rotate else np.zeros(3)
    factor = rng.uniform(*aug.scale) if scale else 1.0
    if rotate or scale:
        x, y = _affine(x, y, patch, rot, factor)
    else:
        x, y = _centre_crop(x, patch), _centre_crop(y, patch)
    if rng.random() < aug.elastic_p:
        import torch
        from monai.transforms import Rand3DElastic

        el = Rand3DElastic(sigma_range=aug.elastic_sigma, magnitude_range=aug.elastic_magnitude, prob=1.0,
                           padding_mode="zeros")
        el.set_random_state(seed=int(rng.integers(2**31 - 1)))
        xi = el(torch.from_numpy(np.ascontiguousarray(x))[None], mode="bilinear")
        yi = el(torch.from_numpy(np.ascontiguousarray(y).astype(np.float32))[None], mode="nearest",
                randomize=False)
        x, y = np.asarray(xi[0], dtype=np.float32), np.asarray(yi[0]).round().astype(y.dtype)
    x = x + background
    if rng.random() < aug.noise_p:
        x = x + rng.normal(0.0, math.sqrt(rng.uniform(*aug.noise_variance)), x.shape).astype(np.float32)
    if rng.random() < aug.blur_p:
        from scipy.ndimage import gaussian_filter

        x = gaussian_filter(x, sigma=rng.uniform(*aug.blur_sigma)).astype(np.float32)
    if rng.random() < aug.brightness_p:
        x = x * np.float32(rng.uniform(*aug.brightness))
    if rng.random() < aug.contrast_p:
        lo, hi, mean = float(x.min()), float(x.max()), float(x.mean())
        x = np.clip((x - mean) * np.float32(rng.uniform(*aug.contrast)) + mean, lo, hi)
    if rng.random() < aug.lowres_p:
        import torch
        import torch.nn.functional as F

        zoom = rng.uniform(*aug.lowres_zoom)
        t = torch.from_numpy(np.ascontiguousarray(x))[None, None]
        small = F.interpolate(t, size=[max(1, round(s * zoom)) for s in x.shape], mode="nearest")
        x = F.interpolate(small, size=list(x.shape), mode="trilinear", align_corners=False)[0, 0].numpy()
    if rng.random() < aug.gamma_p:
        lo, hi = float(x.min()), float(x.max())
        span = max(hi - lo, 1e-6)
        x = (((x - lo) / span) ** np.float32(rng.uniform(*aug.gamma)) * span + lo).astype(np.float32)
    if rng.random() < aug.mirror_p:
        x, y = x[:, :, ::-1], y[:, :, ::-1]
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y)
