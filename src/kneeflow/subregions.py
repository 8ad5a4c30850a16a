"""Femoral cartilage subregions (canonical labels 11-15) as the reference pipeline defines them.

pymskt's definition: the knee is registered (similarity, mean squares on the femur masks) to a
reference right knee (``right_knee_example.nrrd``, shipped in the mskt source distribution); in that
frame the trochlear notch splits anterior from weight-bearing cartilage, the weight-bearing band ends
60 % of the way from the notch to the posterior edge, the notch's medio-lateral position splits medial
from lateral, and weight-bearing cartilage high on the posterior condyles counts as posterior. The
labels are mapped back to the knee's grid. The reference is a right knee and the registration a
similarity transform, which cannot mirror: left knees are mirrored to right knees first (through the
patient's mid-sagittal plane) and the labels mirrored back (pymskt itself does not, and on a mirrored
right knee puts all weight-bearing cartilage in the medial plate). pymskt downloads the reference at
run time; here it must be a local file (``make install`` extracts it from the mskt sdist on PyPI into
``.cache/pymskt_data``).
"""

from __future__ import annotations

__all__ = ["DEFAULT_REFERENCE", "femoral_subregions", "reference_path"]

import logging
import os
from pathlib import Path

import numpy as np

from kneeflow.labels import CANONICAL, FEMORAL_SUBREGIONS

log = logging.getLogger(__name__)

DEFAULT_REFERENCE = Path(__file__).resolve().parents[2] / ".cache" / "pymskt_data" / "right_knee_example.nrrd"


def reference_path(path: str | os.PathLike | None = None, shrink: int = 2) -> Path:
    """The reference knee label map, shrunk ``shrink`` x per axis (cached beside it).

    Registering to the 384 x 384 x 160 reference takes ~50 s per knee on 2 cores; at half resolution
    ~14 s, with 99.2 % of femoral cartilage voxels labelled as at full resolution (real DESS map).
    """
    p = Path(path) if path else DEFAULT_REFERENCE
    if not p.exists():
        raise FileNotFoundError(
            f"{p}: the femoral-subregion reference knee is missing; `make install` extracts it from the mskt "
            "sdist (pip download --no-binary :all: mskt==0.1.22), or set thickness.subregion_reference"
        )
    if shrink <= 1:
        return p
    small = p.with_name(f"{p.name.split('.')[0]}_shrink{shrink}.nrrd")
    if not small.exists():
        import SimpleITK as sitk

        ref = sitk.ReadImage(str(p))
        out = sitk.Resample(ref, [s // shrink for s in ref.GetSize()], sitk.Transform(), sitk.sitkNearestNeighbor,
                            ref.GetOrigin(), [s * shrink for s in ref.GetSpacing()], ref.GetDirection(), 0,
                            ref.GetPixelID())
        from kneeflow.atomic import atomic_path

        with atomic_path(small, ".nrrd") as tmp:
            sitk.WriteImage(out, str(tmp), True)
    return small


def femoral_subregions(labels_img, reference: str | os.PathLike | None = None, *, shrink: int = 2, seed: int = 0,
                       side: str = "right"):
    """Return a copy of a canonical label map with femoral cartilage (2) split into 11-15.

    The registration runs in the knee's canonical frame (:func:`kneeflow.orientation.canonical_knee`:
    axes in LPS order, a left knee as its mirror image, since the reference is a right knee), so a
    knee and its mirror image get mirror-image subregions voxel for voxel, however the mirror was
    made. ``side``: the knee's side where the anatomy (the tibial plates) cannot tell. Deterministic:
    the registration samples a fixed fraction of voxels with a fixed seed.
    """
    from kneeflow.orientation import canonical_knee

    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    frame = canonical_knee(labels_img, side)
    return frame.to_original(_register_subregions(frame.image, reference, shrink, seed))


def _register_subregions(labels_img, reference, shrink: int, seed: int):
    """femoral_subregions of a right knee's label map, on its own grid."""
    import SimpleITK as sitk

    get_aligned_cartilage_subregions = _pymskt_cartilage_processing().get_aligned_cartilage_subregions
    arr = sitk.GetArrayViewFromImage(labels_img)
    for name in ("femoral_cartilage", "femur", "medial_tibial_cartilage", "lateral_tibial_cartilage"):
        if not (arr == CANONICAL[name]).any():
            raise ValueError(f"femoral subregions need {name} in the label map; it is empty")
    ref = sitk.ReadImage(str(reference_path(reference, shrink)))
    # the registration samples voxels at random; pymskt leaves ITK's seed at its fixed default, which
    # makes the result identical run to run (tested)
    np.random.seed(seed)
    out = get_aligned_cartilage_subregions(
        labels_img,
        femurLabel=CANONICAL["femoral_cartilage"],
        femurBoneLabel=CANONICAL["femur"],
        medTibiaLabel=CANONICAL["medial_tibial_cartilage"],
        latTibiaLabel=CANONICAL["lateral_tibial_cartilage"],
        antFemurMask=FEMORAL_SUBREGIONS["anterior_femoral_cartilage"],
        medWbFemurMask=FEMORAL_SUBREGIONS["medial_weight_bearing_femoral_cartilage"],
        latWbFemurMask=FEMORAL_SUBREGIONS["lateral_weight_bearing_femoral_cartilage"],
        medPostFemurMask=FEMORAL_SUBREGIONS["medial_posterior_femoral_cartilage"],
        latPostFemurMask=FEMORAL_SUBREGIONS["lateral_posterior_femoral_cartilage"],
        reference_image_input=ref,
    )
    res = sitk.GetArrayFromImage(out).astype(np.uint8)
    left = int((res == CANONICAL["femoral_cartilage"]).sum())
    if left:
        log.warning("%d femoral cartilage voxels fell outside every subregion; kept as label 2", left)
    img = sitk.GetImageFromArray(res)
    img.CopyInformation(labels_img)
    return img


def _pymskt_cartilage_processing():
    """pymskt's ``pymskt.image.cartilage_processing``, without importing the pymskt package: its
    ``__init__`` imports all of pymskt (meshes, registration, viewers: IPython, itkwidgets, pyfocusr,
    matplotlib), ~4 s per subregions job, 20 jobs in the demo; the module imports only numpy, scipy,
    SimpleITK and requests."""
    from kneeflow.optional import module_from_package_file

    return module_from_package_file("pymskt", "image/cartilage_processing.py",
                                    name="kneeflow._pymskt_cartilage_processing", env="envs/mesh.yaml")
