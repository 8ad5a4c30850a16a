"""Neural shape model and BScore: formula, model I/O, public layout, determinism, bad meshes, cohort."""

import json

import numpy as np
import pytest

from fixtures import synthetic_femur

from kneeflow import alignment, shape, surface

TINY = {"decoder": "deepsdf", "surfaces": ["femur"], "latent_size": 4, "hidden": 32, "n_layers": 4, "fourier": 2,
        "skip": 2, "steps": 60, "points_per_step": 512, "samples_per_shape": 4000, "seed": 0}


@pytest.fixture(scope="module")
def femurs():
    """Three small synthetic femurs (2 mm grid, coarse meshes: fast)."""
    return {f"k{i}": synthetic_femur(300 + i, "left" if i == 1 else "right", oa=0.4 * i, spacing=2.0,
                                           n_points=1500) for i in range(3)}


SIDES = {"k0": "right", "k1": "left", "k2": "right"}


# ---------------------------------------------------------------------------------------------- BScore


def _latents(rng, n, mean):
    return {f"s{i}": (mean + rng.normal(0, 1, size=len(mean))).tolist() for i in range(n)}


def test_bscore_formula():
    rng = np.random.default_rng(0)
    h = _latents(rng, 10, np.zeros(6))
    o = {f"o{k}": v for k, v in _latents(rng, 8, np.full(6, 2.0)).items()}
    groups = {**{k: "healthy" for k in h}, **{k: "oa" for k in o}}
    m = shape.fit_bscore({**h, **o}, groups)
    mh = np.mean([h[k] for k in h], axis=0)
    mo = np.mean([o[k] for k in o], axis=0)
    assert shape.bscore(m, mh) == 0.0  # the healthy mean scores exactly 0
    assert shape.bscore(m, mo) == pytest.approx(np.linalg.norm(mo - mh) / m["std_healthy"], rel=1e-12)
    proj = np.array([h[k] for k in h]) @ np.asarray(m["bscore_vector"])
    assert m["std_healthy"] == pytest.approx(proj.std(ddof=1), rel=1e-12)
    assert np.linalg.norm(m["bscore_vector"]) == pytest.approx(1.0)
    # healthy scores have mean 0 and SD 1 in their own units
    hs = [shape.bscore(m, h[k]) for k in h]
    assert np.mean(hs) == pytest.approx(0, abs=1e-9) and np.std(hs, ddof=1) == pytest.approx(1, rel=1e-9)


def test_bscore_model_roundtrip_and_errors(tmp_path):
    rng = np.random.default_rng(1)
    lat = _latents(rng, 6, np.zeros(3))
    groups = {k: ("healthy" if i < 3 else "oa") for i, k in enumerate(lat)}
    m = shape.fit_bscore(lat, groups)
    p = tmp_path / "model.json"
    shape.save_bscore_model(m, p)
    m2 = shape.load_bscore_model(p)
    z = rng.normal(size=3)
    assert shape.bscore(m2, z) == shape.bscore(m, z)
    # the public layout: only these three keys are needed
    pub = tmp_path / "public.json"
    pub.write_text(json.dumps({k: m[k] for k in ("bscore_vector", "mean_healthy", "std_healthy")}))
    assert shape.bscore(shape.load_bscore_model(pub), z) == shape.bscore(m, z)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"bscore_vector": [1, 0, 0]}))
    with pytest.raises(shape.ShapeError, match="bad.json.*lacks"):
        shape.load_bscore_model(bad)
    with pytest.raises(shape.ShapeError, match="does not match"):
        shape.bscore(m, [0.0] * 4)
    with pytest.raises(shape.ShapeError, match="healthy"):
        shape.fit_bscore(lat, {k: "healthy" for k in lat})


# ---------------------------------------------------------------------------------------------- meshes


def test_bad_meshes_are_refused(tmp_path, femurs):
    import vtk

    from kneeflow.mesh import write_vtk

    empty = tmp_path / "empty.vtk"
    write_vtk(vtk.vtkPolyData(), empty)
    with pytest.raises(shape.ShapeError, match="empty.vtk: .*empty"):
        surface.load_surface(empty)
    # an open mesh: cut a cap off
    clip = vtk.vtkClipPolyData()
    plane = vtk.vtkPlane()
    pts, _ = surface.mesh_arrays(femurs["k0"])
    plane.SetOrigin(*pts.mean(0))
    plane.SetNormal(0, 0, 1)
    clip.SetInputData(femurs["k0"])
    clip.SetClipFunction(plane)
    clip.Update()
    opened = tmp_path / "open.vtk"
    write_vtk(clip.GetOutput(), opened)
    with pytest.raises(shape.ShapeError, match="open.vtk: mesh is not closed"):
        surface.load_surface(opened)
    # far from the reference pose: the same femur turned 90 degrees about the left-right axis
    ref_al = alignment.align(pts, False, None)
    ref = surface.sample_on_surface(ref_al.forward(pts), surface.mesh_arrays(femurs["k0"])[1], 20000,
                                  np.random.default_rng(0))
    al = alignment.align(pts, False, ref, where="same.vtk")
    assert al.rotation_deg < 2 and al.residual < 0.015
    c = pts.mean(0)
    rot = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=float)
    turned = (pts - c) @ rot.T + c
    with pytest.raises(shape.ShapeError, match="turned.vtk: far from the reference"):
        alignment.align(turned, False, ref, where="turned.vtk")


def test_alignment_roundtrip_and_mirroring(femurs):
    pts, _ = surface.mesh_arrays(femurs["k1"])
    al = alignment.Alignment(True, [1.0, 2.0, 3.0], np.eye(3).tolist(), 0.02, [0.1, 0.0, -0.1])
    assert np.allclose(al.inverse(al.forward(pts)), pts, atol=1e-9)
    # the left knee mirrored lands on the right knee's side of the reference
    right, _ = surface.mesh_arrays(femurs["k0"])
    ref_al = alignment.align(right, False, None)
    ref = ref_al.forward(right)
    al_left = alignment.align(pts, True, ref, where="k1")
    assert al_left.residual < 0.05


# ---------------------------------------------------------------------------------------------- NSM


@pytest.fixture(scope="module")
def tiny_model(femurs):
    return shape.train({k: {"femur": v} for k, v in femurs.items()}, SIDES, TINY)


def test_train_save_load_and_fit_is_deterministic(tmp_path, femurs, tiny_model):
    assert set(tiny_model.latents) == set(femurs)
    hist = tiny_model.cfg["history"]
    assert hist[-1]["loss"] < hist[0]["loss"]
    shape.save_model(tiny_model, tmp_path / "nsm")
    m = shape.load_model(tmp_path / "nsm")
    kw = dict(iterations=30, points=1000, n_samples=4000, seed=3)
    a = shape.fit(m, {"k2": {"femur": femurs["k2"]}}, {"k2": "right"}, **kw)["k2"]
    b = shape.fit(m, {"k2": {"femur": femurs["k2"]}}, {"k2": "right"}, **kw)["k2"]
    assert a.latent == b.latent and a.loss == b.loss
    assert a.iterations == 30 and np.isfinite(a.loss)
    pts, tris = shape.reconstruct(m, a.latent, a.alignment, resolution=48)
    assert len(pts) > 100
    # the reconstruction lies where the input is (input coordinates, mm): centroids within 5 mm
    ip, _ = surface.mesh_arrays(femurs["k2"])
    assert np.linalg.norm(pts.mean(0) - ip.mean(0)) < 5.0


def test_coarse_to_fine_grid_gives_the_full_grids_surface(tiny_model):
    """grid_sdf decodes a band around the surface after a coarse pass: the same marching-cubes surface
    as decoding every grid point (a trained model's latents and an exact distance field), and on the
    distance field from about a third of the decoder evaluations."""
    import torch

    class Ball(torch.nn.Module):  # the signed distance to a ball of radius 0.6 (+ the latent's x shift)
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def forward(self, z, q):
            return (torch.linalg.norm(q - torch.stack([z[:, 0], 0 * z[:, 0], 0 * z[:, 0]], -1)[:, None], dim=-1)
                    - 0.6)[..., None]

    class Plate(Ball):  # 30 x the distance to a slab 0.01 thick at x = the latent's first value
        def forward(self, z, q):
            return 30.0 * (torch.abs(q[..., :1] - z[:, None, :1]) - 0.005)

    ball = shape.ShapeModel({"latent_size": 2, "surfaces": ["femur"]}, Ball(), None)
    # a steep field (the public triplanar models' slopes reach ~30) with a feature thinner than a
    # block: a fixed band would miss it; the band widens with the measured slope
    steep = shape.ShapeModel({"latent_size": 2, "surfaces": ["femur"]}, Plate(), None)
    al = {"mirror": False, "centre": [0.0, 0.0, 0.0], "rotation": np.eye(3).tolist(), "scale": 0.02,
          "translation": [0.0, 0.0, 0.0]}
    # at 96 points per axis x = 0.0316 is a grid point between two coarse ones (0.0105 and 0.0526);
    # a band of fixed width misses that slab (checked)
    for m, latents, sizes in ((tiny_model, list(tiny_model.latents.values())[:2], (96, 97)),
                              (ball, [[0.0, 0.0], [0.13, 0.0]], (96, 97)), (steep, [[2 / 95 * 49 - 1, 0.0]], (96,))):
        calls = []
        sdf = m.sdf

        def counting(z, x, **kw):
            calls.append(len(np.asarray(x).reshape(-1, 3)))
            return sdf(z, x, **kw)

        for latent in latents:
            for r in sizes:  # even and odd sizes (the last block is one cell wide)
                full = m.grid_sdf(latent, r, coarse=False)
                m.sdf = counting
                calls.clear()
                band = m.grid_sdf(latent, r, coarse=True)
                m.sdf = sdf
                if m is not tiny_model:  # every point keeps the sign of the truth
                    assert np.array_equal(full > 0, band > 0)
                if m is ball:
                    assert sum(calls) < 0.4 * r**3, (r, sum(calls))
                # the same triangles; vertices within a micrometre (float32 rounding depends on the batch size)
                a = shape.reconstruct(m, latent, al, resolution=r, coarse=False)
                b = shape.reconstruct(m, latent, al, resolution=r)
                assert len(a[1]) > 1000 and np.array_equal(a[1], b[1]) and np.allclose(a[0], b[0], atol=1e-3), r


def test_batched_fit_equals_single_fits(femurs, tiny_model):
    kw = dict(iterations=20, points=800, n_samples=4000, seed=1)
    both = shape.fit(tiny_model, {k: {"femur": femurs[k]} for k in ("k0", "k2")}, SIDES, **kw)
    one = shape.fit(tiny_model, {"k2": {"femur": femurs["k2"]}}, SIDES, **kw)
    # same samples per knee (seeded per call), independent latents: the batch changes nothing
    # beyond float summation order
    assert np.allclose(both["k2"].latent, one["k2"].latent, atol=1e-4)


def test_checkpoint_errors(tmp_path, tiny_model):
    import torch

    folder = tmp_path / "nsm"
    shape.save_model(tiny_model, folder)
    with pytest.raises(shape.ShapeError, match="sha256 mismatch"):
        shape.load_model(folder, sha256={"model.pth": "0" * 64})
    (tmp_path / "empty").mkdir()
    with pytest.raises(shape.ShapeError, match="no model_params_config.json"):
        shape.load_model(tmp_path / "empty")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": Evil()}, folder / "model.pth")
    with pytest.raises(shape.ShapeError, match="not a safe weights-only"):
        shape.load_model(folder)


def test_triplanar_trains_and_loads_in_the_public_layout(tmp_path, femurs):
    """Our trainer can train the public triplanar decoder and save it in the public layout; it loads back."""
    import torch

    cfg = {"decoder": "triplanar", "surfaces": ["femur"], "latent_size": 8, "conv_hidden_dims": [8, 8, 8],
           "conv_norm_type": "layer", "sdf_latent_size": 8, "sdf_hidden_dims": [16, 16], "steps": 30,
           "points_per_step": 512, "samples_per_shape": 4000, "seed": 0}
    m = shape.train({k: {"femur": v} for k, v in femurs.items()}, SIDES, cfg)
    shape.save_public(m, tmp_path / "pub", epoch=30)
    shape.save_public(m, tmp_path / "pub", epoch=7)  # an earlier checkpoint beside it: the highest epoch wins
    assert shape.find_checkpoint(tmp_path / "pub", {}).name == "30.pth"
    pub = shape.load_model(tmp_path / "pub")
    assert pub.public and pub.surfaces == ["femur"] and pub.reference is None
    names = list(pub.decoder.state_dict())
    assert "sdf_decoder.layers.0.weight_g" in names and "vae_decoder.decoder.0.weight" in names
    x = np.random.default_rng(0).uniform(-1, 1, (50, 3))
    z = np.asarray([m.latents["k0"]])
    with torch.no_grad():
        want = m.decoder(torch.as_tensor(z, dtype=torch.float32), torch.as_tensor(x, dtype=torch.float32)[None]).numpy()
    got = pub.sdf(z, x)
    assert got.shape == (1, 50, 1) and got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-6
    assert pub.mean_shape(resolution=48).shape[1] == 3  # the zero latent decodes to a surface


def test_bone_and_cartilage_heads(femurs):
    """Two surfaces: one SDF head each (here the second surface is the femur dilated by 2 mm)."""
    import vtk

    def offset(poly, mm):
        n = vtk.vtkPolyDataNormals()
        n.SetInputData(poly)
        n.AutoOrientNormalsOn()
        n.SplittingOff()
        n.Update()
        w = vtk.vtkWarpVector()
        w.SetInputData(n.GetOutput())
        n.GetOutput().GetPointData().SetActiveVectors("Normals")
        w.SetScaleFactor(mm)
        w.Update()
        return w.GetOutput()

    knees = {k: {"femur": v, "femoral_cartilage": offset(v, 2.0)} for k, v in femurs.items()}
    cfg = {**TINY, "surfaces": ["femur", "femoral_cartilage"]}
    m = shape.train(knees, SIDES, cfg)
    _, q, d, _ = shape.prepare(knees["k0"], False, m.reference, 2000, 0, where="k0")
    assert d.shape == (2000, 2)
    # the outer surface encloses the bone: its signed distance is smaller everywhere
    assert (d[:, 1] < d[:, 0]).mean() > 0.99
    out = m.decoder(__import__("torch").zeros(1, 4), __import__("torch").as_tensor(q[None, :10]))
    assert out.shape == (1, 10, 2)


@pytest.mark.slow
def test_synthetic_cohort_bscore_tracks_oa_and_nsm_reconstructs(tmp_path):
    """Held-out synthetic femurs: BScore vs generator OA severity (Spearman >= 0.85), NSM ASSD <= 0.3 mm."""
    from scipy.stats import spearmanr

    knees, sides, oa = {}, {}, {}
    for i in range(26):
        s = f"k{i:02d}"
        oa[s] = round((i % 13) / 12, 3)
        sides[s] = "left" if i % 3 == 1 else "right"
        knees[s] = {"femur": synthetic_femur(500 + i, sides[s], oa[s])}
    test = [s for i, s in enumerate(sorted(knees)) if i % 4 == 3]
    train = [s for s in sorted(knees) if s not in test]
    cfg = {"decoder": "deepsdf", "surfaces": ["femur"], "latent_size": 16, "hidden": 64, "n_layers": 6,
           "fourier": 4, "skip": 3, "steps": 1200, "points_per_step": 1024, "samples_per_shape": 20000, "seed": 0}
    model = shape.train({s: knees[s] for s in train}, sides, cfg)
    # the demo's fit settings (config/demo.yaml shape.fit): 300 iterations, patience 100, 4000 points,
    # marching cubes at 128 (with 800 x 8000 points and 160: the same Spearman, ASSD within 0.004 mm)
    res = shape.fit(model, {s: knees[s] for s in test}, sides, iterations=300, points=4000, patience=100)
    groups = {s: ("healthy" if oa[s] < 0.4 else "oa") for s in train}
    bm = shape.fit_bscore(model.latents, groups)
    scores = [shape.bscore(bm, res[s].latent) for s in test]
    rho = spearmanr([oa[s] for s in test], scores).statistic
    assd = []
    for s in test:
        pts, tris = shape.reconstruct(model, res[s].latent, res[s].alignment, resolution=128)
        ip, it = surface.mesh_arrays(knees[s]["femur"])
        assd.append(surface.surface_distance(ip, it, pts, tris)["assd"])
    print(f"held-out n={len(test)}: Spearman(BScore, OA) = {rho:.3f}; NSM ASSD mean {np.mean(assd):.3f} mm, "
          f"max {np.max(assd):.3f} mm")
    assert rho >= 0.85
    assert np.mean(assd) <= 0.3 and np.max(assd) <= 0.3
