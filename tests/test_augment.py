"""Training augmentation (issue 21): image and labels stay aligned, seeded draws repeat."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("monai")

from kneeflow.augment import Augment, _affine, augment_patch, region_for  # noqa: E402
from kneeflow.training import PatchSampler, patch_rng  # noqa: E402

PATCH = (24, 20, 20)
OFF = {k: 0.0 for k in Augment().as_dict() if k.endswith("_p")}


def _blobs(shape=(60, 60, 60), seed=0):
    """Labels: three balls (r 6-9 voxels) and a slab; image: label x 10 + a little texture."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    lab = np.zeros(shape, np.uint8)
    lab[(z > 6) & (z < 12)] = 4
    for v, r in ((1, 9), (2, 7), (3, 6)):
        c = rng.uniform(20, 40, 3)
        lab[(z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < r**2] = v
    return lab.astype(np.float32) * 10, lab


def _region(img, lab, aug, centre=(30, 30, 30)):
    """The region around ``centre`` that augment_patch reads."""
    r = region_for(PATCH, aug)
    sl = tuple(slice(c - n // 2, c - n // 2 + n) for c, n in zip(centre, r))
    return img[sl], lab[sl]


def test_no_augmentation_is_the_centre_crop():
    img, lab = _blobs()
    aug = Augment(**OFF)
    x, y = _region(img, lab, aug)
    assert x.shape == PATCH  # no spatial transform: no margin read
    ox, oy = augment_patch(x, y, PATCH, aug, np.random.default_rng(0))
    assert np.array_equal(ox, x) and np.array_equal(oy, y)


def test_identity_affine_is_the_centre_crop():
    """MONAI's Affine with no rotation and scale 1 samples the region's centre: the crop."""
    img, lab = _blobs()
    big = np.asarray(PATCH) + 10
    sl = tuple(slice(30 - n // 2, 30 - n // 2 + n) for n in big)
    x, y = _affine(img[sl], lab[sl], PATCH, np.zeros(3), 1.0)
    sl2 = tuple(slice(30 - p // 2, 30 - p // 2 + p) for p in PATCH)
    assert np.allclose(x, img[sl2], atol=1e-4) and np.array_equal(y, lab[sl2])


@pytest.mark.parametrize("which", ["rotate_scale", "elastic"])
def test_warped_labels_stay_on_the_warped_image(which):
    img, lab = _blobs()
    aug = Augment(**{**OFF, "rotate_p": 1.0, "scale_p": 1.0} if which == "rotate_scale" else {**OFF, "elastic_p": 1.0,
                                                                                             "elastic_sigma": (3.0, 4.0)})
    x, y = _region(img, lab, aug)
    x = (y == 1).astype(np.float32) * 100  # the image: the largest ball's indicator
    changed = 0
    for seed in range(4):
        ox, oy = augment_patch(x, y, PATCH, aug, np.random.default_rng(seed))
        assert ox.shape == PATCH and oy.shape == PATCH and oy.dtype == lab.dtype
        # the indicator interpolated linearly and thresholded is the nearest-neighbour label
        a, b = ox > 50, oy == 1
        assert b.sum() > 100, seed
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.95, seed
        assert np.abs(np.argwhere(a).mean(axis=0) - np.argwhere(b).mean(axis=0)).max() < 0.5, seed
        crop = tuple(slice((s - p) // 2, (s - p) // 2 + p) for s, p in zip(y.shape, PATCH))
        changed += not np.array_equal(oy, y[crop])
    assert changed == 4  # it did warp


def test_seeded_draws_repeat_and_differ_between_seeds():
    img, lab = _blobs()
    aug = Augment(elastic_p=0.5)
    sampler = PatchSampler([(img, lab)], PATCH, 0.5, aug)
    a = [sampler.sample(patch_rng(0, step, i)) for step in range(3) for i in range(2)]
    b = [sampler.sample(patch_rng(0, step, i)) for step in range(3) for i in range(2)]
    for (xa, ya), (xb, yb) in zip(a, b):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    c = sampler.sample(patch_rng(1, 0, 0))
    assert not np.array_equal(c[0], a[0][0])
    for x, y in a:
        assert x.shape == PATCH and y.shape == PATCH and x.dtype == np.float32


def test_intensity_transforms_keep_labels_and_change_the_image():
    img, lab = _blobs()
    for key in ("noise_p", "blur_p", "brightness_p", "contrast_p", "lowres_p", "gamma_p"):
        aug = Augment(**{**OFF, key: 1.0})
        x, y = _region(img, lab, aug)
        ox, oy = augment_patch(x + 1.0, y, PATCH, aug, np.random.default_rng(3))
        assert np.array_equal(oy, y), key
        assert not np.allclose(ox, x + 1.0), key


def test_config_errors_name_the_setting():
    with pytest.raises(ValueError, match="rotation_p"):
        Augment.from_config({"rotation_p": 0.2})
    with pytest.raises(ValueError, match="blur_p"):
        Augment.from_config({"blur_p": 1.5})
    assert Augment.from_config({"scale": [0.8, 1.2]}).scale == (0.8, 1.2)


def test_preview_writes_the_augmented_patches(tmp_path):
    """`kneeflow train --preview DIR` writes the patches training would draw first, and trains nothing."""
    import json

    import SimpleITK as sitk

    from kneeflow import phantom
    from kneeflow.workflow.cli import main

    d = tmp_path / "knee"
    phantom.write(phantom.synthesize(5, "right", 0.0, spacing=2.0, mese=False), d)
    settings = {"arch": {"name": "mednext_custom", "init_filters": 4}, "patch_size": [24, 20, 20], "batch_size": 2,
                "augment": {"rotate_p": 1.0}}
    main(["train", "--settings", json.dumps(settings), "--images", str(d / "image.nii.gz"), "--labels",
          str(d / "labels.nii.gz"), "--out", str(tmp_path / "model"), "--preview", str(tmp_path / "preview")])
    assert (tmp_path / "preview" / "preview.png").stat().st_size > 10_000
    x = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "preview" / "patch3_image.nii.gz")))
    y = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "preview" / "patch3_labels.nii.gz")))
    assert x.shape == y.shape == (24, 20, 20) and len(sorted(tmp_path.joinpath("preview").glob("patch*_image.nii.gz"))) == 8
    assert not (tmp_path / "model").exists()
