import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = (ROOT / ".." / "shared" / "data").resolve()
sys.path.insert(0, str(ROOT / "src"))


def shared(*parts) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.fail(f"shared reference data missing: {p} (CI has ../shared beside the clone)")
    return p


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def mese_dir() -> Path:
    return shared("pymskt", "MESE_T2_dicom_data_anon")


@pytest.fixture(scope="session")
def dess_labels() -> Path:
    return shared("pymskt", "SAG_3D_DESS_RIGHT_bones_cart_men_fib-label.nrrd")


@pytest.fixture(scope="session")
def small_knee():
    """A right knee at 1.0 mm (fast) with its truth."""
    from kneeflow import phantom

    return phantom.synthesize(7, "right", 0.0, spacing=1.0, mese=True)


def to_itk(arr, spacing, origin=(0.0, 0.0, 0.0)):
    import numpy as np
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(arr, (2, 1, 0))))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    return img


os.environ.setdefault("OMP_NUM_THREADS", "2")
