import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ROOT, to_itk

from kneeflow import labels as L
from kneeflow import mesh as M
from kneeflow import thickness as T


def _shell_image(spacing, r_bone, t, center_offset=(0.3, -0.2, 0.1)):
    n = int(2 * (r_bone + t + 5) / spacing)
    ax = (np.arange(n) - n / 2 + 0.5) * spacing
    x, y, z = np.meshgrid(ax - center_offset[0], ax - center_offset[1], ax - center_offset[2], indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    lab = np.zeros(r.shape, np.uint8)
    lab[r <= r_bone] = 7
    lab[(r > r_bone) & (r <= r_bone + t)] = 2
    return to_itk(lab, (spacing,) * 3)


def _measure(img, bone_label=7, cart_label=2, n=4000):
    poly = M.bone_mesh(img, [bone_label], n, bone="bone", crop_percent=None)
    th, reg = T.bone_thickness(M.points(poly), M.point_normals(poly), {cart_label: M.cartilage_field(img, [cart_label])},
                               img, [cart_label])
    return th, reg


@pytest.mark.parametrize("spacing,r_bone,t", [(0.3, 15.0, 1.5), (0.5, 15.0, 1.5), (0.5, 20.0, 2.5),
                                              (0.7, 15.0, 1.5), (0.7, 20.0, 2.5)])
def test_concentric_shells(spacing, r_bone, t):
    th, reg = _measure(_shell_image(spacing, r_bone, t))
    assert (th > 0).mean() > 0.99
    assert abs(th[th > 0].mean() - t) <= 0.05, th[th > 0].mean()
    assert set(np.unique(reg[th > 0])) == {2}


@pytest.mark.parametrize("spacing", [0.35, 0.7])
def test_slab_with_oblique_direction(spacing):
    """A 2.0 mm cartilage slab on a box bone, in an oblique (rotated) image: thickness on the top face."""
    n = int(40 / spacing)
    lab = np.zeros((n, n, n), np.uint8)
    c = np.arange(n) * spacing
    z = c[None, None, :]
    lab[:, :, :] = np.where(z < 20, 7, 0)
    lab[:, :, :] = np.where((z >= 20) & (z < 22), 2, lab)
    lab[: int(3 / spacing)], lab[-int(3 / spacing):] = 0, 0
    lab[:, : int(3 / spacing)], lab[:, -int(3 / spacing):] = 0, 0
    lab[:, :, : int(3 / spacing)] = 0
    img = to_itk(lab, (spacing,) * 3, origin=(-12.0, 40.0, 7.0))
    a = np.deg2rad(17)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ np.array(
        [[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    img.SetDirection(rot.ravel().tolist())
    th, _ = _measure(img)
    top = th[th > 0]
    # a voxelised slab is exactly (cartilage voxels along z) x spacing thick
    expected = ((z >= 20) & (z < 22)).sum() * spacing
    assert abs(expected - 2.0) < spacing
    assert np.median(top) == pytest.approx(expected, abs=0.05)


def test_summary_table_and_empty_region():
    th = np.array([0.0, 2.0, 2.2, 1.8, 0.0])
    reg = np.array([0, 2, 2, 2, 0])
    df = T.summarise("s", "femur", th, reg, {2: "femoral_cartilage", 99: "nowhere"})
    mean = df[(df.region == "femoral_cartilage") & (df.stat == "mean")].value_mm.item()
    assert mean == pytest.approx(2.0)
    assert df[(df.region == "femoral_cartilage") & (df.stat == "n_vertices")].value_mm.item() == 3
    assert np.isnan(df[(df.region == "nowhere") & (df.stat == "mean")].value_mm.item())
    assert list(df.columns) == ["sample", "bone", "region", "stat", "value_mm"]


def test_empty_cartilage_is_nan_not_a_crash(small_knee):
    lab = small_knee.labels.copy()
    lab[lab == L.CANONICAL["patellar_cartilage"]] = 0
    meshes, table = T.measure_knee(to_itk(lab, small_knee.spacing, small_knee.origin), "k",
                                   n_points={"femur": 3000, "tibia": 3000, "patella": 1500})
    pat = table[(table.region == "patellar_cartilage") & (table.stat == "mean")].value_mm.item()
    assert np.isnan(pat)
    assert "patella" in meshes and "patellar_cartilage" not in meshes


def test_missing_bone_is_a_clear_error(small_knee):
    lab = small_knee.labels.copy()
    lab[lab == L.CANONICAL["tibia"]] = 0
    with pytest.raises(M.MeshError, match="tibia .* is empty"):
        T.measure_knee(to_itk(lab, small_knee.spacing, small_knee.origin), "k", source="knee.nii.gz")


def test_same_input_gives_identical_tables(small_knee):
    img = to_itk(small_knee.labels, small_knee.spacing, small_knee.origin)
    kw = dict(n_points={"femur": 3000, "tibia": 3000, "patella": 1500})
    _, a = T.measure_knee(img, "k", **kw)
    _, b = T.measure_knee(img, "k", **kw)
    assert a.to_csv() == b.to_csv()


def test_real_pymskt_meshes_summaries():
    """The real meshes from pymskt carry its thickness; our summary of them matches its published means."""
    from vtk.util import numpy_support as ns

    from conftest import shared

    fem = M.read_vtk(shared("pymskt", "femur_thickness_mm_regions_10k_pts.vtk"))
    th = ns.vtk_to_numpy(fem.GetPointData().GetArray("thickness (mm)"))
    reg = ns.vtk_to_numpy(fem.GetPointData().GetArray("labels")).astype(int)
    df = T.summarise("ref", "femur", th, reg, {1: "femoral_cartilage"})
    mean = df[df.stat == "mean"].value_mm.item()
    assert 2.16 <= mean <= 2.25
    # our normals on the same real surface point outwards (the ray direction thickness depends on)
    pts, nrm = M.points(fem), M.point_normals(fem)
    outward = ((pts - pts.mean(0)) * nrm).sum(1) > 0
    assert outward.mean() > 0.9


@pytest.mark.slow
@pytest.mark.reference
def test_real_dess_agrees_with_pymskt(dess_labels, tmp_path):
    """Our meshes + thickness vs pymskt's own BoneMesh pipeline on the real DESS label map: <= 0.10 mm."""
    ref_json = tmp_path / "ref.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "_pymskt_reference.py"), str(dess_labels), str(ref_json)],
                   check=True, cwd=ROOT, capture_output=True, timeout=900)
    ref = json.loads(ref_json.read_text())["regions"]
    img = sitk.ReadImage(str(dess_labels))
    arr = L.remap_to_canonical(sitk.GetArrayFromImage(img), L.PYMSKT)
    lab = sitk.GetImageFromArray(arr)
    lab.CopyInformation(img)
    _, table = T.measure_knee(lab, "dess")
    ours = table[table.stat == "mean"].set_index("region").value_mm
    pairs = {"femoral_cartilage": "femur:1", "medial_tibial_cartilage": "tibia:2",
             "lateral_tibial_cartilage": "tibia:3", "patellar_cartilage": "patella:4"}
    diffs = {r: abs(ours[r] - ref[k]["mean"]) for r, k in pairs.items()}
    print("mean thickness |ours - pymskt| (mm):", diffs)
    assert max(diffs.values()) <= 0.10, diffs


def test_surface_shifts_tell_the_articular_from_the_deep_surface():
    """A model that misses the cartilage's top voxel layer moves the articular surface by one voxel
    towards the bone and leaves the bone interface where it was (and the reverse for the bottom)."""
    sp = 0.5
    n = 60
    z = (np.arange(n) * sp)[None, None, :]
    lab = np.broadcast_to(np.where(z < 12, 7, 0), (n, n, n)).astype(np.uint8)
    lab = np.where((z >= 12) & (z < 14.5), 2, lab).astype(np.uint8)
    lab[:6], lab[-6:], lab[:, :6], lab[:, -6:], lab[:, :, :4] = 0, 0, 0, 0, 0
    thin_top = np.where((lab == 2) & (z >= 14.0), 0, lab).astype(np.uint8)
    thin_bottom = np.where((lab == 2) & (z < 12.5), 7, lab).astype(np.uint8)
    ref = to_itk(lab, (sp,) * 3)
    poly = M.bone_mesh(ref, [7], 4000, bone="femur", crop_percent=None)
    pts, nrm = M.points(poly), M.point_normals(poly)
    top = nrm[:, 2] > 0.95  # the bone's top face, under the slab
    f_ref = M.cartilage_field(ref, [2])
    for test, moved, still in ((thin_top, "articular", "deep"), (thin_bottom, "deep", "articular")):
        s = T.surface_shifts(pts, nrm, f_ref, M.cartilage_field(to_itk(test, (sp,) * 3), [2]))
        sel = top & s["both"]
        assert sel.sum() > 100
        shift = -sp if moved == "articular" else sp
        assert np.median(s[moved][sel]) == pytest.approx(shift, abs=0.05)
        assert np.median(np.abs(s[still][sel])) < 0.05
        assert np.median(s["t_test"][sel] - s["t_ref"][sel]) == pytest.approx(-sp, abs=0.05)
        # the reference's articular crossing lies on the voxelised slab's top face: half a voxel
        # above the centres of its top layer (z = 14.0 mm)
        assert np.median(s["articular_ref"][sel][:, 2]) == pytest.approx(14.0 + sp / 2, abs=0.05)
