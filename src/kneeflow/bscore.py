"""The BScore: where a knee's shape lies on the axis from the healthy to the OA mean shape.

Public ``model.json`` layout: ``bscore_vector`` v (unit vector from the healthy to the OA mean latent),
``mean_healthy`` and ``std_healthy`` (ddof=1) of the healthy latents projected on v;
score = (z . v - mean_healthy) / std_healthy. Numpy only, so cohort-level rules need no torch or VTK.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from kneeflow.atomic import atomic_path

__all__ = ["ShapeError", "bscore", "check_pair", "fit_bscore", "load_bscore_model", "save_bscore_model"]


class ShapeError(ValueError):
    """A mesh, shape model or BScore model that cannot be used; the message names the file and the problem."""


def fit_bscore(latents: dict[str, list[float]], groups: dict[str, str]) -> dict:
    """BScore model from latents of healthy and OA knees (public ``model.json`` layout)."""
    h = np.array([latents[s] for s in latents if groups.get(s) == "healthy"], dtype=np.float64)
    o = np.array([latents[s] for s in latents if groups.get(s) == "oa"], dtype=np.float64)
    if len(h) < 2 or len(o) < 1:
        raise ShapeError(f"a BScore needs >= 2 healthy and >= 1 OA knees with latents; got {len(h)} healthy, {len(o)} OA")
    mh, mo = h.mean(0), o.mean(0)
    diff = mo - mh
    norm = float(np.linalg.norm(diff))
    if norm == 0:
        raise ShapeError("healthy and OA mean latents coincide; no BScore direction")
    v = diff / norm
    proj = h @ v
    return {"bscore_vector": v.tolist(), "mean_healthy": float(mh @ v), "std_healthy": float(proj.std(ddof=1)),
            "n_healthy": int(len(h)), "n_oa": int(len(o)), "mean_latent_healthy": mh.tolist(),
            "mean_latent_oa": mo.tolist()}


def bscore(model: dict, latent):
    """BScore of latents (L,) -> float, (1, L) -> array (1,), (N, L) -> array (N,), as the public code."""
    v = np.asarray(model["bscore_vector"], dtype=np.float64)
    z = np.asarray(latent, dtype=np.float64)
    if z.ndim not in (1, 2) or z.shape[-1] != v.size:
        raise ShapeError(f"latent of shape {z.shape} does not match the BScore vector of size {v.size}")
    score = (z @ v - model["mean_healthy"]) / model["std_healthy"]
    return float(score) if z.ndim == 1 else score


def check_pair(model: dict, latent_size: int, model_name: str = "BScore model", nsm_name: str = "shape model") -> None:
    """Refuse a BScore model that belongs to another NSM (its vector's size differs from the latents')."""
    n = len(model["bscore_vector"])
    if n != int(latent_size):
        raise ShapeError(f"{model_name}: its bscore_vector has {n} values but {nsm_name} has latents of size "
                         f"{latent_size}; a BScore model belongs to one NSM (pair them in shape.pretrained)")


def save_bscore_model(model: dict, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(model, indent=1, sort_keys=True) + "\n")


def load_bscore_model(path: str | os.PathLike) -> dict:
    """A ``model.json``, or a public ``BSCORE_MODELS/<name>/`` folder holding one."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.json"
    try:
        m = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ShapeError(f"{p}: unreadable BScore model ({e})") from None
    missing = [k for k in ("bscore_vector", "mean_healthy", "std_healthy") if k not in m]
    if missing:
        raise ShapeError(f"{p}: BScore model lacks {missing}")
    if not isinstance(m["bscore_vector"], list) or not m["bscore_vector"]:
        raise ShapeError(f"{p}: bscore_vector must be a non-empty list of numbers")
    if not m["std_healthy"] > 0:
        raise ShapeError(f"{p}: std_healthy must be > 0, got {m['std_healthy']}")
    return m
