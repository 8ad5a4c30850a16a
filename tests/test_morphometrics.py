"""Cartilage morphometrics (issue 20): analytic slabs, denuded bone, the phantom's truth, left == mirrored
right, the thickness-map image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")
pytest.importorskip("vtk")

from kneeflow.labels import CANONICAL, PYMSKT  # noqa: E402
from kneeflow.morphometrics import STD_SUBREGIONS, morphometrics  # noqa: E402
from kneeflow.orientation import mirror_left_right  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "pymskt"
MT, LT, TIBIA = CANONICAL["medial_tibial_cartilage"], CANONICAL["lateral_tibial_cartilage"], CANONICAL["tibia"]


def _label_map(fn, spacing=0.5, size=(160, 130, 100), centre=(0.0, 0.0, -8.0), direction=None):
    """A label map whose voxels hold fn(x, y, z) at their physical centres (LPS mm)."""
    d = np.eye(3) if direction is None else np.asarray(direction, float).reshape(3, 3)
    size = np.asarray(size)
    origin = np.asarray(centre) - d @ ((size - 1) / 2 * spacing)
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in size], indexing="ij")
    ijk = np.stack([ii, jj, kk], -1).reshape(-1, 3) * spacing
    xyz = ijk @ d.T + origin
    lab = fn(*xyz.T).reshape(*size).astype(np.uint8)
    img = sitk.GetImageFromArray(np.ascontiguousarray(lab.transpose(2, 1, 0)))
    img.SetSpacing((spacing,) * 3)
    img.SetOrigin(tuple(origin))
    img.SetDirection(tuple(d.ravel()))
    return img


def _flat(hole_mm=0.0):
    """Box tibia (top at z = 0), a medial (x > 0) disc r = 13 mm and a lateral disc r = 12 mm (about a
    real tibial plate's area), 2 mm thick."""
    def fn(x, y, z):
        out = np.zeros(x.shape, np.uint8)
        out[(np.abs(x) < 32) & (np.abs(y) < 20) & (z > -18) & (z <= 0)] = TIBIA
        top = (z > 0) & (z <= 2.0)
        r_med = np.hypot(x - 16, y)
        out[top & (r_med < 13) & (r_med >= hole_mm)] = MT
        out[top & (np.hypot(x + 16, y) < 12)] = LT
        return out
    return fn


def _curved(x, y, z, radius=25.0, t=2.0):
    """Cylinder tibia (axis along y, top at z = 0) with two 2 mm shells of 0.6 rad x 16 mm."""
    out = np.zeros(x.shape, np.uint8)
    zc = z + radius  # axis at z = -radius
    r = np.hypot(x, zc)
    phi = np.arctan2(x, zc)  # 0 at the top, + medial
    along = np.abs(y) < 8
    out[(r <= radius) & (np.abs(y) < 20) & (zc > radius - 20)] = TIBIA
    shell = (r > radius) & (r <= radius + t) & along
    out[shell & (phi > 0.15) & (phi < 0.75)] = MT
    out[shell & (phi < -0.15) & (phi > -0.75)] = LT
    return out


def _tilted():
    """An oblique grid: 20 degrees about an axis off every scanner axis."""
    return sitk.VersorTransform((0.3, 1.0, 0.5), np.deg2rad(20)).GetMatrix()


def _plate(table, plate, subregion="all"):
    t = table[(table.plate == plate) & (table.subregion == subregion)]
    return dict(zip(t.measure, t.value))


def thick_csv_mean(thick, region="medial_tibial_cartilage"):
    return thick[(thick.region == region) & (thick.stat == "mean")].value_mm.item()


def _measure(img, side="right"):
    return morphometrics(img, "analytic", side=side, bones=("tibia",), crop_percent=None)


@pytest.mark.parametrize("direction", [None, "tilted"])
def test_flat_slab_volume_area_thickness(direction):
    img = _label_map(_flat(), direction=_tilted() if direction else None)
    _, thick, table, std, tmap = _measure(img)
    area, t = np.pi * 13**2, 2.0
    m = _plate(table, "MT")
    assert m["VC"] == pytest.approx(area * t, rel=0.02)
    assert m["tAB"] == pytest.approx(area, rel=0.03)
    assert m["cAB"] == pytest.approx(area, rel=0.03)
    # the issue's bound is 0.05 mm; measured 1.986-1.991 here. On the meshes' smoothing with every ray
    # kept (thickness.csv's rays) the plate's rounded rim took it to 1.932-1.949
    assert m["ThCcAB.Me"] == pytest.approx(t, abs=0.03)
    assert thick_csv_mean(thick) < m["ThCcAB.Me"] - 0.02
    median = thick[(thick.region == "medial_tibial_cartilage") & (thick.stat == "median")].value_mm.item()
    assert median == pytest.approx(t, abs=0.02)
    assert m["dAB%"] < 1.0
    assert m["AC"] == pytest.approx(area, rel=0.05)  # the top face (rims excluded)
    assert _plate(table, "LT")["tAB"] == pytest.approx(np.pi * 12**2, rel=0.03)
    # the five tibial subregions partition the plate, the central one 20 % of tAB
    subs = {s: _plate(table, "MT", s) for s in ("cMT", "aMT", "pMT", "iMT", "eMT")}
    assert sum(v["tAB"] for v in subs.values()) == pytest.approx(m["tAB"], rel=1e-9)
    assert sum(v["VC"] for v in subs.values()) == pytest.approx(m["VC"], rel=1e-9)
    assert subs["cMT"]["tAB"] / m["tAB"] == pytest.approx(0.20, abs=0.02)
    for s in ("aMT", "pMT", "iMT", "eMT"):  # a disc: four near-equal triangles
        assert subs[s]["tAB"] / m["tAB"] == pytest.approx(0.20, abs=0.03)
    # geometry of the images = the label map's
    for im in (std, tmap):
        assert im.GetSize() == img.GetSize() and np.allclose(im.GetDirection(), img.GetDirection())
        assert np.allclose(im.GetOrigin(), img.GetOrigin()) and np.allclose(im.GetSpacing(), img.GetSpacing())


def test_subregion_sides_follow_anatomy():
    """Internal (towards the eminence) and external subregions: on the right knee internal MT lies
    lateral of the plate's centre, and a left knee (its mirror image) gives the same numbers."""
    img = _label_map(_flat())
    _, _, right, std, _ = _measure(img, "right")
    _, _, left, std_l, _ = _measure(mirror_left_right(img), "left")
    lab = sitk.GetArrayFromImage(std)
    x = np.array([img.TransformIndexToPhysicalPoint((int(i), 0, 0))[0] for i in range(img.GetSize()[0])])
    cols = {c: x[np.nonzero(lab == STD_SUBREGIONS[c])[2]].mean() for c in ("iMT", "eMT", "iLT", "eLT")}
    assert cols["iMT"] < cols["eMT"]  # MT (x > 0, medial for a right knee): internal is lateral
    assert cols["iLT"] > cols["eLT"]
    _assert_mirrored(right, left)


def _assert_mirrored(right, left, rel_bound=0.01):
    """Every plate and subregion within ``rel_bound`` (the issue's 1 %); dAB% within 1 % of itself or
    0.01 points. Both knees are measured on one canonical array, so the numbers agree exactly."""
    a = right.set_index(["plate", "subregion", "measure"]).value
    b = left.set_index(["plate", "subregion", "measure"]).value.loc[a.index]
    assert len(a) == len(left)
    measure = a.index.get_level_values(2)
    rel = ((b - a) / a.abs().clip(lower=1e-9)).abs()
    keep = measure != "dAB%"
    assert rel[keep].max() < rel_bound, rel[keep].sort_values().tail()
    d = (b - a)[~keep].abs()
    assert (d < np.maximum(0.01, rel_bound * a[~keep].abs())).all(), d.sort_values().tail()


def _array_flip(img):
    """A left-right mirror made another way: the array flipped along the axis nearest to x, the
    header kept (the knee mirrored about the volume's centre plane)."""
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    k = int(np.argmax(np.abs(d[0])))
    out = sitk.GetImageFromArray(np.ascontiguousarray(np.flip(sitk.GetArrayFromImage(img), 2 - k)))
    out.CopyInformation(img)
    return out


def _header_flip(img):
    """And a third: the array kept, the header mirrored (LPS x -> -x)."""
    r = np.diag([-1.0, 1.0, 1.0])
    out = sitk.Image(img)
    out.SetDirection(tuple((r @ np.asarray(img.GetDirection()).reshape(3, 3)).ravel()))
    out.SetOrigin(tuple(r @ np.asarray(img.GetOrigin())))
    return out


def test_canonical_frame_is_one_array_for_a_knee_and_its_mirrors():
    """However a right knee is mirrored into a left one (world mirror, array flip, header flip), on an
    oblique grid, the canonical frame holds the same array; results come back exactly."""
    from kneeflow import mesh
    from kneeflow.orientation import canonical_knee, knee_side

    img = _label_map(_flat(), size=(120, 90, 70), direction=_tilted())
    right = canonical_knee(img)
    assert knee_side(img) == "right" and not right.mirrored
    for mirror in (mirror_left_right, _array_flip, _header_flip):
        left = mirror(img)
        assert knee_side(left) == "left", mirror.__name__
        c = canonical_knee(left, side="right")  # the anatomy wins over a wrong declared side
        assert c.mirrored and c.side == "left"
        assert np.array_equal(sitk.GetArrayViewFromImage(c.image), sitk.GetArrayViewFromImage(right.image))
        assert c.image.GetSpacing() == right.image.GetSpacing()
        back = c.to_original(c.image)
        assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(left))
        assert back.GetDirection() == left.GetDirection() and back.GetOrigin() == left.GetOrigin()
        # a canonical point maps to the world point of the same voxel of the input
        q = np.array([10, 20, 30])
        world = c.matrix @ (q * np.asarray(c.image.GetSpacing())) + c.offset
        lab = sitk.GetArrayViewFromImage(c.image)[q[2], q[1], q[0]]
        idx = left.TransformPhysicalPointToIndex(tuple(world))
        assert sitk.GetArrayViewFromImage(left)[idx[2], idx[1], idx[0]] == lab
        assert np.allclose(left.TransformIndexToPhysicalPoint(idx), world, atol=1e-6)
    # a mesh maps to the world with its triangles still facing outwards
    poly = mesh.iso_surface(mesh.smooth_mask(mesh.binary_mask(right.image, [TIBIA]), 0.5))
    c = canonical_knee(_header_flip(img))
    moved = mesh.transform(poly, c.matrix, c.offset)
    assert np.allclose(mesh.points(moved), mesh.points(poly) @ c.matrix.T + c.offset, atol=1e-9)
    n0, n1 = mesh.point_normals(poly), mesh.point_normals(moved)
    assert np.allclose(n1, n0 @ c.matrix.T, atol=1e-3)


def test_curved_slab():
    img = _label_map(_curved, size=(120, 80, 70), centre=(0.0, 0.0, -6.0))
    _, _, table, _, _ = _measure(img)
    radius, t, angle, length = 25.0, 2.0, 0.6, 16.0
    m = _plate(table, "MT")
    assert m["VC"] == pytest.approx(angle / 2 * ((radius + t) ** 2 - radius**2) * length, rel=0.02)
    assert m["tAB"] == pytest.approx(radius * angle * length, rel=0.03)
    assert m["ThCcAB.Me"] == pytest.approx(t, abs=0.03)  # 2.001 measured (thickness.csv's rays: 1.922)
    # the articular surface of a convex shell is larger than its bone interface
    assert m["AC"] > m["tAB"]


def test_hole_is_denuded_bone():
    img = _label_map(_flat(hole_mm=4.0))
    _, _, table, _, _ = _measure(img)
    m = _plate(table, "MT")
    truth = 100 * 4.0**2 / 13.0**2
    assert m["dAB%"] == pytest.approx(truth, rel=0.10)
    assert m["tAB"] == pytest.approx(np.pi * 13**2, rel=0.03)
    assert m["cAB"] == pytest.approx(np.pi * (13**2 - 4**2), rel=0.03)
    assert m["ThCtAB.Me"] == pytest.approx(m["ThCcAB.Me"] * m["cAB"] / m["tAB"])
    assert _plate(table, "LT")["dAB%"] < 1.0
    # the bone outside the joint (the box's sides and bottom) is no plate's
    assert m["tAB"] < 1.05 * np.pi * 13**2


@pytest.fixture(scope="module")
def phantom_knee():
    from kneeflow import phantom as ph
    from kneeflow.subregions import femoral_subregions

    knee = ph.synthesize(109, "right", 0.6, 0.7, mese=False, lesions={"MT": 40.0, "cMF": 30.0})
    img = sitk.GetImageFromArray(np.ascontiguousarray(knee.labels.transpose(2, 1, 0)))
    img.SetSpacing(knee.spacing)
    img.SetOrigin(knee.origin)
    return knee, img, femoral_subregions(img, shrink=3, side="right")


@pytest.mark.slow
def test_phantom_against_truth_and_its_mirror(phantom_knee):
    from kneeflow.subregions import femoral_subregions

    knee, raw, labels = phantom_knee
    _, thick, table, std, tmap = morphometrics(labels, "knee")
    truth = knee.truth["morphometrics"]
    for plate in ("F", "MT", "LT", "P"):
        got = _plate(table, plate)
        for m in ("VC", "tAB", "cAB"):
            assert got[m] == pytest.approx(truth[plate][m], rel=0.05), (plate, m)
    assert _plate(table, "MT")["dAB%"] == pytest.approx(truth["MT"]["dAB%"], rel=0.15)
    assert _plate(table, "F")["dAB%"] == pytest.approx(truth["F"]["dAB%"], rel=0.15)
    assert _plate(table, "cMF")["dAB%"] > 2.0 and _plate(table, "cLF")["dAB%"] < 1.0
    for plate in ("LT", "P", "TrF"):
        assert _plate(table, plate)["dAB%"] < 1.0, plate

    # the thickness map: mean over a plate's voxels vs the mesh's mean (thickness.csv) and ThCcAB.Me
    # (a voxel mean weights each place by its thickness, so it runs above both: 0.03-0.08 mm here)
    lab, tm = sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(tmap)
    mean = thick[thick.stat == "mean"].set_index("region").value_mm
    for region, labs, plate in (("femoral_cartilage", [2, 11, 12, 13, 14, 15], "F"), ("medial_tibial_cartilage", [MT], "MT"),
                                ("lateral_tibial_cartilage", [LT], "LT"), ("patellar_cartilage", [1], "P")):
        sel = np.isin(lab, labs)
        assert (tm[sel] > 0).mean() > 0.99
        assert (tm[~np.isin(lab, [1, 2, 3, 4, 11, 12, 13, 14, 15])] == 0).all()
        assert tm[sel].mean() == pytest.approx(mean[region], abs=0.1), region
        assert tm[sel].mean() == pytest.approx(_plate(table, plate)["ThCcAB.Me"], abs=0.1), region
        # ThCcAB.Me against the implicit surfaces' area-weighted thickness (0.002-0.05 mm measured)
        assert _plate(table, plate)["ThCcAB.Me"] == pytest.approx(knee.truth["thickness_mm"][region], abs=0.1), region

    # the same knee mirrored and declared left: the same numbers, medial stays medial
    left = femoral_subregions(mirror_left_right(raw), shrink=3, side="left")
    _, _, mirrored, _, _ = morphometrics(left, "knee", side="left")
    _assert_mirrored(table, mirrored)


@pytest.mark.slow
@pytest.mark.reference
def test_real_label_map_left_equals_mirrored_right():
    from kneeflow import io
    from kneeflow.orientation import canonical_knee
    from kneeflow.subregions import femoral_subregions

    path = SHARED / "SAG_3D_DESS_RIGHT_bones_cart_men_fib-label.nrrd"
    if not path.exists():
        pytest.skip(f"{path} is missing (../shared/data)")
    raw = io.load_label_map(str(path), PYMSKT)
    right = femoral_subregions(raw, shrink=3, side="right")
    left = femoral_subregions(mirror_left_right(raw), shrink=3, side="left")
    # the femoral plates of the left knee are the mirror image of the right's, voxel for voxel
    assert np.array_equal(sitk.GetArrayFromImage(mirror_left_right(left)), sitk.GetArrayFromImage(right))
    _, _, a, _, _ = morphometrics(right, "right")
    _, _, b, _, _ = morphometrics(left, "left", side="left")
    _assert_mirrored(a, b)
    # mirrored the other ways (array or header flipped, an oblique sagittal grid): the same canonical
    # array, so the same subregions and numbers
    for mirror in (_array_flip, _header_flip):
        assert np.array_equal(sitk.GetArrayViewFromImage(canonical_knee(mirror(raw)).image),
                              sitk.GetArrayViewFromImage(canonical_knee(raw).image)), mirror.__name__


def test_subregions_load_pymskts_module_without_its_package():
    """femoral_subregions runs pymskt's own cartilage_processing file but never imports the pymskt
    package (whose __init__ costs ~4 s per job); the same function as `import pymskt` gives."""
    import subprocess
    import sys

    code = (
        "import sys, inspect\n"
        "from kneeflow.subregions import _pymskt_cartilage_processing as load\n"
        "m = load()\n"
        "assert load() is m\n"
        "assert not any(k == 'pymskt' or k.startswith('pymskt.') for k in sys.modules), sorted(sys.modules)\n"
        "src = inspect.getsource(m.get_aligned_cartilage_subregions)\n"
        "import pymskt.image.cartilage_processing as ref\n"
        "assert inspect.getsourcefile(ref) == m.__file__, (inspect.getsourcefile(ref), m.__file__)\n"
        "assert inspect.getsource(ref.get_aligned_cartilage_subregions) == src\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
