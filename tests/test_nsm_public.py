"""The public knee shape models (gattia/nsm, ShapeMedKnee) and BScore models as published.

The folders in ../shared/data/nsm were written by gattia/nsm's own code with the SDF values its decoder
returns: they are the arbiter of a faithful loader.
"""

import json
import shutil

import numpy as np
import pytest
import torch

from kneeflow import alignment, bscore, nsm_recipe, shape, surface
from kneeflow.triplanar import build_triplanar
from conftest import SHARED
from fixtures import synthetic_femur

NSM = SHARED / "nsm"
PUBLIC = SHARED / "public"
FOLDERS = ["triplanar_bone_cartilage", "triplanar_bone_only"]


@pytest.mark.parametrize("name", FOLDERS)
def test_public_folders_reproduce_the_public_decoder(name):
    m = shape.load_model(NSM / name)
    ref = np.load(NSM / name / "reference_sdf.npz")
    assert m.public and m.reference is None
    n_surf = ref["sdf"].shape[2]
    assert m.surfaces == ["femur", "femoral_cartilage"][:n_surf]
    got = m.sdf(ref["latents"], ref["points"])
    assert got.shape == ref["sdf"].shape and got.dtype == np.float32
    assert np.abs(got - ref["sdf"]).max() < 1e-5
    # one latent at a time gives the same values as the batch
    assert np.abs(m.sdf(ref["latents"][1], ref["points"])[0] - ref["sdf"][1]).max() < 1e-5


@pytest.mark.parametrize("keep", ["layers", "decoder", "both"])
def test_either_name_set_of_the_conv_blocks_loads(tmp_path, keep):
    src = NSM / "triplanar_bone_only"
    ck = torch.load(src / "model" / "10.pth", weights_only=True)
    drop = {"layers": "vae_decoder.decoder.", "decoder": "vae_decoder.layers.", "both": "-"}[keep]
    sd = {k: v for k, v in ck["model"].items() if not k.startswith(drop)}
    assert len(sd) < len(ck["model"]) or keep == "both"
    folder = tmp_path / "m"
    (folder / "model").mkdir(parents=True)
    # the other config name some releases use, and a checkpoint of another epoch
    shutil.copy(src / "model_params_config.json", folder / "model_config.json")
    torch.save({"epoch": 2000, "model": sd}, folder / "model" / "2000.pth")
    torch.save({"epoch": 3, "model": {}}, folder / "model" / "3.pth")  # lower epoch: not the one loaded
    ref = np.load(src / "reference_sdf.npz")
    m = shape.load_model(folder)
    assert np.abs(m.sdf(ref["latents"], ref["points"]) - ref["sdf"]).max() < 1e-5
    with pytest.raises(shape.ShapeError, match="3.pth: weights do not match"):
        shape.load_model(folder, checkpoint="model/3.pth")


def test_public_647_config_builds_the_public_state_dict():
    cfg = json.loads((PUBLIC / "nsm_647_femur_bone_cartilage_config.json").read_text())
    with torch.device("meta"):
        dec = build_triplanar(cfg)
    sd = dec.state_dict()
    assert len(sd) == 58
    assert tuple(sd["sdf_decoder.layers.0.weight_v"].shape) == (512, 131)
    assert tuple(sd["sdf_decoder.layers.3.weight_v"].shape) == (2, 512)  # bone + cartilage
    assert tuple(sd["vae_decoder.fc.weight"].shape) == (512 * 4, 512)
    # the final conv: 3 planes x sdf_latent_size channels, under both names
    assert tuple(sd["vae_decoder.layers.10.0.weight"].shape) == (384, 512, 3, 3)
    assert tuple(sd["vae_decoder.decoder.10.0.weight"].shape) == (384, 512, 3, 3)
    assert tuple(sd["vae_decoder.layers.9.weight"].shape) == (512, 64, 64)  # LayerNorm over [C, 64, 64]
    assert nsm_recipe.recipe_settings(cfg)["scale_jointly"] is True


def test_public_bscore_model_scores_as_the_public_code(tmp_path):
    path = PUBLIC / "bscore_bone_only_jan_2025_model.json"
    m = bscore.load_bscore_model(path)
    v = np.asarray(m["bscore_vector"])
    mh, sh = m["mean_healthy"], m["std_healthy"]
    assert len(v) == 512
    assert bscore.bscore(m, mh * v) == pytest.approx(0, abs=1e-9)
    assert bscore.bscore(m, (mh + sh) * v) == pytest.approx(1, abs=1e-9)
    one = bscore.bscore(m, ((mh + sh) * v)[None])
    assert one.shape == (1,) and one[0] == pytest.approx(1, abs=1e-9)
    many = bscore.bscore(m, np.stack([mh * v, (mh + sh) * v, (mh - 2 * sh) * v]))
    assert many.shape == (3,) and np.allclose(many, [0, 1, -2], atol=1e-9)
    # a public BSCORE_MODELS/<name>/ folder loads too
    folder = tmp_path / "BSCORE_MODELS" / "NSM_Orig_BScore_Bone_Only_Jan_2025"
    folder.mkdir(parents=True)
    shutil.copy(path, folder / "model.json")
    assert bscore.load_bscore_model(folder)["mean_healthy"] == mh
    # a BScore model belongs to one NSM: another latent size is refused, naming both
    with pytest.raises(shape.ShapeError, match="512 values.*latents of size 16"):
        bscore.check_pair(m, 16, str(path), "the triplanar_bone_cartilage model")
    with pytest.raises(shape.ShapeError, match="does not match"):
        bscore.bscore(m, np.zeros(16))


@pytest.fixture(scope="module")
def small_public_model(tmp_path_factory):
    """A small triplanar model trained on synthetic femurs, saved and loaded in the public layout."""
    fem = {f"k{i}": synthetic_femur(300 + i, "left" if i == 1 else "right", oa=0.4 * i, spacing=2.0,
                                          n_points=1500) for i in range(3)}
    sides = {"k0": "right", "k1": "left", "k2": "right"}
    cfg = {"decoder": "triplanar", "surfaces": ["femur"], "latent_size": 8, "conv_hidden_dims": [16, 16, 16],
           "conv_norm_type": "layer", "sdf_latent_size": 8, "sdf_hidden_dims": [32, 32], "steps": 400,
           "points_per_step": 1024, "samples_per_shape": 6000, "seed": 0, "lr": 3e-3, "latent_lr": 3e-3}
    m = shape.train({k: {"femur": v} for k, v in fem.items()}, sides, cfg)
    folder = tmp_path_factory.mktemp("nsm") / "public"
    shape.save_public(m, folder, epoch=400)
    # trained on jointly scaled shapes (every shape aligned to the first by a similarity), as the 647 model
    assert json.loads((folder / "model_params_config.json").read_text())["scale_jointly"] is True
    return shape.load_model(folder), m.latents


def _input_knee(model, latent, mirror=False):
    """The reconstruction of a latent, placed in scanner mm by a known similarity (8 degrees, 40 mm/unit)."""
    th = np.radians(8)
    rz = [[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]]
    al = alignment.Alignment(mirror, [10.0, -20.0, 30.0], rz, 1 / 40, [0.0, 0.0, 0.0])
    pts, tris = shape.reconstruct(model, latent, al, resolution=96)
    return surface.make_poly(pts, tris)


def test_public_recipe_recovers_a_latents_own_reconstruction(small_public_model):
    model, latents = small_public_model
    z = latents["k0"]
    right = _input_knee(model, z)
    left = _input_knee(model, z, mirror=True)  # the same knee as a left knee
    res, prep = nsm_recipe.fit_public(model, {"r": {"femur": right}, "l": {"femur": left}}, {"r": "right", "l": "left"})
    for s in ("r", "l"):
        r = res[s]
        assert prep[s].z_cut is not None  # the femur was clipped: an open surface
        assert len(r.latent) == 8 and r.iterations < 2000  # stopped by the convergence rule
        recon = {"femur": shape.reconstruct(model, r.latent, r.alignment, resolution=96)}
        assd = nsm_recipe.assd_per_surface(model, r, prep[s], recon)["femur"]
        print(f"{s}: ASSD {assd:.3f} mm after {r.iterations} iterations, scale {r.scale:.4f}/mm")
        assert assd < 0.5
        assert r.scale == pytest.approx(1 / 40, rel=0.05)  # the ICP found the known scale
        assert np.allclose(np.asarray(r.icp_transform)[3], [0, 0, 0, 1])
    # left == mirrored right
    assert np.abs(np.asarray(res["r"].latent) - res["l"].latent).max() < 0.05
    # deterministic for a seed; a knee's fit does not depend on its batch (up to float rounding)
    again, _ = nsm_recipe.fit_public(model, {"r": {"femur": right}, "l": {"femur": left}}, {"r": "right", "l": "left"})
    assert again["r"].latent == res["r"].latent and again["l"].latent == res["l"].latent
    alone, _ = nsm_recipe.fit_public(model, {"r": {"femur": right}}, {"r": "right"})
    assert np.abs(np.asarray(alone["r"].latent) - res["r"].latent).max() < 1e-3
