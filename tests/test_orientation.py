"""Scans in any orientation: every model sees the layout it was trained in, and the labels come back
exactly onto the scan's own grid (axes permuted and flipped, the physical image unchanged)."""

import numpy as np
import pytest
import SimpleITK as sitk

from kneeflow import phantom
from kneeflow.inference import Segmenter
from kneeflow.postprocess import assign_bone_fragments, clean_labels, fill_holes, keep_largest_components
from kneeflow.orientation import check_layout, dosma_layout, layout_of, predict_in_layout, reorient
from kneeflow.preprocessing import read_case

TINY = {"name": "mednext_custom", "init_filters": 4, "blocks_down": [1, 1, 1, 1], "blocks_bottleneck": 1,
        "blocks_up": [1, 1, 1, 1], "kernel_size": 3, "deep_supervision": True}
#: the layouts a knee is stored in by the tests: as synthesised, sagittal DOSMA, axial, flipped
LAYOUTS = ("LPS", "RIP", "PRS", "RAI")


def knee(seed=11, spacing=2.0, oblique_deg=0.0):
    """A synthetic knee (image, labels) as SimpleITK images, optionally on an oblique grid."""
    ph = phantom.synthesize(seed, "right", 0.3, spacing=spacing, mese=False)

    def img(a, dtype):
        im = sitk.GetImageFromArray(np.ascontiguousarray(a.transpose(2, 1, 0)).astype(dtype))
        im.SetSpacing(ph.spacing)
        im.SetOrigin(ph.origin)
        if oblique_deg:
            t = np.radians(oblique_deg)
            r = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
            im.SetDirection(tuple(r.ravel()))
        return im

    return img(ph.image, np.float32), img(ph.labels, np.uint8)


def on_grid(lab, ref):
    """A label map resampled nearest-neighbour onto ``ref``'s grid (physical space)."""
    return sitk.GetArrayFromImage(sitk.Resample(lab, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0))


def test_layout_codes():
    assert dosma_layout(("LR", "SI", "AP")) == "RIP" and dosma_layout(["RL", "IS", "PA"]) == "LSA"
    assert check_layout("ras") == "RAS"
    for bad in ("LLS", "LP", "XYZ", None):
        with pytest.raises(ValueError, match="not an orientation code"):
            check_layout(bad)
    with pytest.raises(ValueError, match="not a DOSMA orientation"):
        dosma_layout(("LR", "SI", "XX"))
    image, _ = knee()
    assert layout_of(image) == "LPS"
    for code in LAYOUTS:
        r = reorient(image, code)
        assert layout_of(r) == code
        # the physical image is unchanged: back on the original grid it is the same array
        assert np.array_equal(on_grid(sitk.Cast(r, sitk.sitkUInt8), sitk.Cast(image, sitk.sitkUInt8)),
                              sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkUInt8)))


@pytest.mark.parametrize("oblique", [0.0, 12.0])
def test_predict_in_layout_returns_the_labels_on_the_scans_grid(oblique):
    """The predictor sees the same array whatever the stored layout; the labels land on the scan's grid."""
    image, labels = knee(oblique_deg=oblique)
    seen = []

    def predict(im):  # "segments" by returning the truth resampled into the layout it is given
        seen.append(sitk.GetArrayFromImage(im))
        out = sitk.Resample(labels, im, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        return out

    for code in LAYOUTS:
        stored = reorient(image, code)
        got = predict_in_layout(predict, stored, "RIP")
        assert got.GetSize() == stored.GetSize() and got.GetDirection() == stored.GetDirection()
        assert got.GetOrigin() == stored.GetOrigin() and got.GetSpacing() == stored.GetSpacing()
        assert np.array_equal(on_grid(got, labels), sitk.GetArrayFromImage(labels))
    assert all(np.array_equal(s, seen[0]) for s in seen[1:])  # one array in the model's layout


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny network of ours trained (a few iterations) on two knees stored in different layouts."""
    from kneeflow.training import TrainConfig, train

    d = tmp_path_factory.mktemp("tiny")
    cases = []
    for i, code in enumerate(("LPS", "PRS")):
        image, labels = knee(seed=30 + i)
        sitk.WriteImage(reorient(image, code), str(d / f"im{i}.nii.gz"))
        sitk.WriteImage(reorient(labels, code), str(d / f"lab{i}.nii.gz"))
        cases.append((str(d / f"im{i}.nii.gz"), str(d / f"lab{i}.nii.gz")))
    cfg = TrainConfig(arch=TINY, patch_size=(32, 32, 32), epochs=1, iterations_per_epoch=6, threads=2, seed=0,
                      val_every=100)
    train(cases, [], d / "model", cfg)
    return d / "model" / "checkpoint.pt"


def test_training_records_its_layout_and_reorients_cases(tiny_model, tmp_path):
    from kneeflow.models import load_checkpoint

    _, meta = load_checkpoint(tiny_model)
    assert meta["layout"] == "LPS"  # the first training image's
    image, labels = knee(seed=31)
    sitk.WriteImage(reorient(image, "PRS"), str(tmp_path / "im.nii.gz"))
    sitk.WriteImage(reorient(labels, "PRS"), str(tmp_path / "lab.nii.gz"))
    arr, lab, _ = read_case(str(tmp_path / "im.nii.gz"), str(tmp_path / "lab.nii.gz"), layout="LPS")
    assert np.array_equal(lab, sitk.GetArrayFromImage(labels))


@pytest.mark.parametrize("oblique", [0.0, 12.0])
def test_our_model_gives_the_same_labels_in_every_layout(tiny_model, oblique):
    seg = Segmenter.from_checkpoint(tiny_model, mirror=False)
    image, _ = knee(seed=40, oblique_deg=oblique)
    ref = None
    for code in LAYOUTS:
        got = seg.predict(reorient(image, code), side="right")
        assert got.GetSize() == reorient(image, code).GetSize()
        phys = on_grid(got, image)
        if ref is None:
            ref = phys
            assert len(np.unique(ref)) >= 3  # the network does predict structures
        else:
            assert np.mean(phys == ref) >= 0.999 and np.array_equal(phys, ref), code
    # without the recorded layout the same network sees another array and its labels differ: the test can fail
    seg.meta["layout"] = None
    other = on_grid(seg.predict(reorient(image, "RAI"), side="right"), image)
    assert not np.array_equal(other, ref)


def test_onnx_export_carries_the_layout(tiny_model, tmp_path):
    from kneeflow import export, models
    from kneeflow.inference import onnx_segmenter

    net, meta = models.load_model(tiny_model)
    export.export_segmentation(net, meta, tmp_path, "tiny", size=(32, 32, 32), formats=("onnx",))
    seg = onnx_segmenter(next(tmp_path.rglob("*.onnx")), mirror=False)
    assert seg.meta["layout"] == "LPS"
    image, _ = knee(seed=40)
    a = on_grid(seg.predict(reorient(image, "RIP")), image)
    b = on_grid(seg.predict(image), image)
    assert np.array_equal(a, b)


def test_slice_fill_closes_marrow_open_at_the_scan_edge():
    """A tibial shaft cut by the scan's edge, its marrow partly missed: no 3D hole (the marrow meets the
    edge), but enclosed by the cortex in every axial slice. ``slices`` fills it; a notch open to the
    outside in every slice and the voxels of other labels stay."""
    z, y, x = np.mgrid[:40, :48, :48]
    r = np.hypot(y - 24, x - 24)
    lab = np.zeros((40, 48, 48), np.uint8)
    lab[r < 16] = 8
    missed = (r < 12) & (y > 24) & (z < 30)  # the posterior half of the marrow, down to the edge
    lab[missed] = 0
    lab[(r < 12) & (y > 24) & (x < 20) & (z < 5)] = 3  # another label inside: not overwritten
    notch = (r >= 13) & (np.abs(x - 24) < 3) & (y < 24)  # open to the outside: not a hole
    lab[notch] = 0
    assert np.array_equal(fill_holes(lab, [8]), lab)  # 3D: nothing enclosed
    filled = fill_holes(lab, [8], slices=True)
    assert (filled[missed] == 8).sum() == (missed & (lab == 0)).sum()
    assert (filled[lab == 3] == 3).all() and (filled[notch] == 0).all()
    assert np.array_equal(clean_labels(lab, "attached") == 8, filled == 8)
    # the same array stored in another axis order gives the same voxels
    perm = fill_holes(np.ascontiguousarray(lab.transpose(2, 0, 1)), [8], slices=True)
    assert np.array_equal(perm.transpose(1, 2, 0), filled)


def test_bone_fragments_join_the_bone_they_touch():
    """The network's patella rim read as femur (and a piece of tibial shaft read as femur): cut off
    from the femur, those voxels rejoin the bone they are attached to instead of becoming background;
    a femur island touching no bone still goes; the result does not depend on the axis order."""
    from scipy import ndimage

    _, labels = knee(seed=12, spacing=1.0)
    ref = sitk.GetArrayFromImage(labels)
    pat, tib = ref == 9, ref == 8
    rim = pat & ~ndimage.binary_erosion(pat)  # the patella's outer voxel layer
    shaft = np.zeros_like(tib)
    zt = np.flatnonzero(tib.any(axis=(1, 2)))
    shaft[zt[0] : zt[0] + 4] = tib[zt[0] : zt[0] + 4]  # the tibia's 4 slices furthest from the joint
    dirty = ref.copy()
    dirty[rim] = 7
    dirty[shaft] = 7
    dirty[1:4, 1:4, 1:4] = 7  # femur in a corner, touching nothing
    assert rim.sum() > 0.2 * pat.sum() and shaft.sum() > 100
    fixed = assign_bone_fragments(dirty)
    assert np.array_equal(fixed[rim], ref[rim]) and np.array_equal(fixed[shaft], ref[shaft])
    assert fixed[1:4, 1:4, 1:4].max() == 0
    elsewhere = ~(rim | shaft)
    elsewhere[1:4, 1:4, 1:4] = False
    assert np.array_equal(fixed[elsewhere], ref[elsewhere])
    cleaned = clean_labels(dirty, "attached")
    assert (cleaned[rim] == 9).all() and (cleaned[shaft] == 8).all()
    assert (clean_labels(dirty, "largest")[rim] == 9).sum() == 0  # the public pipeline's clean-up drops them
    perm = assign_bone_fragments(np.ascontiguousarray(dirty.transpose(2, 0, 1)))
    assert np.array_equal(perm.transpose(1, 2, 0), fixed)
    # a piece larger than the core it touches is not given to it
    toy = np.zeros((30, 30, 30), np.uint8)
    toy[2:5, 2:5, 2:5] = 7  # the femur's core: 27 voxels
    toy[5:11, 2:8, 2:8] = 9  # a loose patella piece of 216 touching it
    toy[15:27, 15:27, 15:27] = 9  # the patella's core
    out = assign_bone_fragments(toy)
    assert (out[5:11, 2:8, 2:8] == 0).all() and (out[2:5, 2:5, 2:5] == 7).all()
    toy[5:11, 2:8, 2:8] = 0
    toy[5:6, 2:4, 2:4] = 9  # now 4 voxels: they join the femur
    assert (assign_bone_fragments(toy)[5:6, 2:4, 2:4] == 7).all()


def test_clean_up_removes_islands_and_fills_bones():
    _, labels = knee(seed=12, spacing=1.0)
    ref = sitk.GetArrayFromImage(labels)
    dirty = ref.copy()
    dirty[1:4, 1:4, 1:4] = 2  # an island of femoral cartilage in a corner, far from the femur
    dirty[1:4, -4:-1, -4:-1] = 1  # and of patellar cartilage
    from scipy import ndimage

    inner = np.argwhere(ndimage.binary_erosion(ref == 7, iterations=2))
    z, y, x = inner[len(inner) // 2]
    dirty[z, y, x] = 0  # a hole inside the femur
    assert keep_largest_components(dirty, [2])[1:4, 1:4, 1:4].max() == 0
    assert fill_holes(dirty, [7])[z, y, x] == 7
    for mode in ("largest", "attached"):
        cleaned = clean_labels(dirty, mode)
        assert cleaned[1:4, 1:4, 1:4].max() == 0 and cleaned[1:4, -4:-1, -4:-1].max() == 0, mode
        assert cleaned[z, y, x] == 7, mode
    # the synthetic femoral cartilage is three plates (trochlea, two condyles): `largest` keeps one,
    # `attached` keeps every plate on the femur, as it keeps a plate split by a full-thickness lesion
    attached = clean_labels(dirty, "attached")
    assert np.array_equal(attached, clean_labels(ref, "attached"))
    assert (attached == 2).sum() == (ref == 2).sum()
    assert (clean_labels(dirty, "largest") == 2).sum() < 0.6 * (ref == 2).sum()
    assert np.array_equal(clean_labels(dirty, "bones")[1:4, 1:4, 1:4], dirty[1:4, 1:4, 1:4])
    with pytest.raises(ValueError, match="unknown clean-up"):
        clean_labels(dirty, "tidy")


def test_channels_last_training_and_inference_match_the_default_layout(tmp_path):
    """`train.channels_last` (the demo's CPU speed-up) changes the memory layout, not the maths: the
    first iterations' losses agree with the default layout's, the checkpoint records it, and a
    Segmenter runs such a network channels-last with the same probabilities as run contiguous."""
    import csv

    import torch

    from kneeflow.models import load_model
    from kneeflow.training import TrainConfig, train

    image, labels = knee(seed=33)
    sitk.WriteImage(image, str(tmp_path / "im.nii.gz"))
    sitk.WriteImage(labels, str(tmp_path / "lab.nii.gz"))
    cases = [(str(tmp_path / "im.nii.gz"), str(tmp_path / "lab.nii.gz"))]
    losses = {}
    for cl in (False, True):
        cfg = TrainConfig(arch=TINY, patch_size=(32, 32, 32), epochs=2, iterations_per_epoch=3, threads=1, seed=0,
                          val_every=100, channels_last=cl)
        train(cases, [], tmp_path / f"m{cl}", cfg)
        with open(tmp_path / f"m{cl}" / "metrics.csv") as f:
            losses[cl] = [float(r["train_loss"]) for r in csv.DictReader(f)]
    assert len(losses[True]) == 2 and np.allclose(losses[True], losses[False], rtol=1e-3), losses
    net, meta = load_model(tmp_path / "mTrue" / "checkpoint.pt")
    assert meta["train_config"]["channels_last"] is True
    seg_cl = Segmenter(net, meta, mirror=False)
    # the depthwise convolutions (the slow ones on CPU) then work channels-last
    depthwise = next(m for m in seg_cl.net.modules() if isinstance(m, torch.nn.Conv3d) and m.groups > 1)
    seen = []
    hook = depthwise.register_forward_hook(lambda m, a, out: seen.append(out))
    net2, _ = load_model(tmp_path / "mTrue" / "checkpoint.pt")
    seg_plain = Segmenter(net2, {**meta, "train_config": {**meta["train_config"], "channels_last": False}}, mirror=False)
    arr = np.random.default_rng(0).normal(size=(40, 36, 44)).astype(np.float32)
    assert np.allclose(seg_cl._logits(arr), seg_plain._logits(arr), atol=1e-4)
    hook.remove()
    assert seen and all(t.is_contiguous(memory_format=torch.channels_last_3d) and not t.is_contiguous() for t in seen)
