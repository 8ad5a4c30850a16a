"""Label conventions and remapping at the boundary.

Inside kneeflow every label map uses the *canonical* convention (the public knee nnU-Net / DOSMA
models' labels). Every model and every input label map declares its own convention by name; maps are
remapped to canonical when they enter the workflow and never afterwards.
"""

from __future__ import annotations

__all__ = ["BONES", "BONE_CARTILAGE", "BUILTIN_CONVENTIONS", "CANONICAL", "CARTILAGES", "FEMORAL_SUBREGIONS",
           "PYMSKT", "get_convention", "remap_to_canonical"]

from collections.abc import Mapping

import numpy as np

#: Canonical kneeflow labels (structure name -> integer).
CANONICAL: dict[str, int] = {
    "patellar_cartilage": 1,
    "femoral_cartilage": 2,
    "medial_tibial_cartilage": 3,
    "lateral_tibial_cartilage": 4,
    "medial_meniscus": 5,
    "lateral_meniscus": 6,
    "femur": 7,
    "tibia": 8,
    "patella": 9,
}

#: Femoral cartilage subregions (canonical), written by the subregion step.
FEMORAL_SUBREGIONS: dict[str, int] = {
    "anterior_femoral_cartilage": 11,
    "medial_weight_bearing_femoral_cartilage": 12,
    "lateral_weight_bearing_femoral_cartilage": 13,
    "medial_posterior_femoral_cartilage": 14,
    "lateral_posterior_femoral_cartilage": 15,
}

#: pymskt's sample-data convention (note: differs from canonical; always remap). The menisci and the
#: fibula as the real label map holds them (tests/test_inference.py checks it from the anatomy: 8 is a
#: long lateral bone below the plateau, 9 and 10 sit on the lateral and medial plateau).
PYMSKT: dict[str, int] = {
    "femoral_cartilage": 1,
    "medial_tibial_cartilage": 2,
    "lateral_tibial_cartilage": 3,
    "patellar_cartilage": 4,
    "femur": 5,
    "tibia": 6,
    "patella": 7,
    "fibula": 8,
    "lateral_meniscus": 9,
    "medial_meniscus": 10,
}

BUILTIN_CONVENTIONS: dict[str, dict[str, int]] = {"canonical": CANONICAL, "pymskt": PYMSKT}

BONES = ("femur", "tibia", "patella")
CARTILAGES = (
    "femoral_cartilage",
    "medial_tibial_cartilage",
    "lateral_tibial_cartilage",
    "patellar_cartilage",
)
#: Which cartilage plates sit on which bone.
BONE_CARTILAGE: dict[str, tuple[str, ...]] = {
    "femur": ("femoral_cartilage",),
    "tibia": ("medial_tibial_cartilage", "lateral_tibial_cartilage"),
    "patella": ("patellar_cartilage",),
}


def get_convention(name: str, extra: Mapping[str, Mapping[str, int]] | None = None) -> dict[str, int]:
    """Return the convention called ``name`` from the built-ins or the config's ``extra`` ones."""
    conventions = dict(BUILTIN_CONVENTIONS)
    if extra:
        conventions.update({k: dict(v) for k, v in extra.items()})
    if name not in conventions:
        raise ValueError(f"unknown label convention {name!r}; known: {sorted(conventions)}")
    return conventions[name]


def remap_to_canonical(
    labels: np.ndarray, convention: Mapping[str, int], *, source: str = "<array>"
) -> np.ndarray:
    """Map a label array from ``convention`` to the canonical convention.

    Structures the canonical convention does not know (e.g. pymskt's fibula) become background.
    A value in ``labels`` that the convention does not declare is an error: it usually means the wrong
    convention was named for the file.

    Parameters
    ----------
    labels : integer array of any shape.
    convention : structure name -> integer used in ``labels``.
    source : the file the labels came from, for error messages.
    """
    values = {int(v) for v in np.unique(labels)}
    declared = set(convention.values()) | {0}
    unknown = sorted(values - declared)
    if unknown:
        raise ValueError(
            f"{source}: label values {unknown} are not in the declared convention "
            f"({dict(convention)}); check label_convention for this file"
        )
    lut = np.zeros(max(values | declared) + 1, dtype=np.uint8)
    all_canonical = {**CANONICAL, **FEMORAL_SUBREGIONS}
    for name, value in convention.items():
        lut[value] = all_canonical.get(name, 0)
    return lut[labels.astype(np.int64)]
