"""The model registry: every entry builds, runs forward on the CPU at a small size, counts parameters."""

import subprocess
import sys

import pytest

from kneeflow import models

SMALL = {  # entry -> kwargs that keep the forward pass small (the parameter count is of the default size)
    "unetr": {"img_size": (32, 32, 32)},
}


@pytest.mark.parametrize("name", [n for n in models.REGISTRY if n not in ("mednext_custom", "nnunet")])
def test_every_registry_entry_builds_and_runs_forward(name):
    import torch

    net = models.build({"name": name, "out_channels": 3, **SMALL.get(name, {})}).eval()
    n = 64 if name == "swinunetr" else 32  # SwinUNETR downsamples 32x: its bottleneck needs > 1 voxel
    with torch.no_grad():
        y = net(torch.randn(1, 1, n, n, n))
    y = y[0] if isinstance(y, (tuple, list)) else y
    assert y.shape == (1, 3, n, n, n)
    assert torch.isfinite(y).all()
    assert models.n_parameters(net) > 100_000


def test_mednext_s_k3_deep_supervision_parameter_count():
    # MedNeXt-S, kernel 3, deep supervision, one input channel and two classes: the paper's 5.55 M
    net = models.build({"name": "mednext_s", "out_channels": 2, "deep_supervision": True})
    assert models.n_parameters(net) == 5_552_842


def test_custom_and_nnunet_entries(tmp_path, root):
    import torch

    net = models.build({"name": "mednext_custom", "out_channels": 2, "init_filters": 8, "blocks_down": [1, 1, 1, 1],
                        "blocks_bottleneck": 1, "blocks_up": [1, 1, 1, 1]}).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 32, 32, 32)).shape == (1, 2, 32, 32, 32)
    plans = root / "config" / "nnunet" / "totalseg_total_3d_fullres" / "nnUNetPlans.json"
    nn = models.build({"name": "nnunet", "plans": str(plans), "out_channels": 105})
    assert 25_000_000 < models.n_parameters(nn) < 40_000_000  # 6 stages, 32..320 features
    with pytest.raises(FileNotFoundError, match="plans file not found"):
        models.build({"name": "nnunet", "plans": str(tmp_path / "missing.json"), "out_channels": 2})
    with pytest.raises(ValueError, match="unknown architecture"):
        models.build({"name": "resnet9000"})


def test_registry_listing_is_one_command(root):
    out = subprocess.run([sys.executable, "-m", "kneeflow.models", "list"], capture_output=True, text=True,
                         cwd=root, check=True).stdout
    for name in ("basicunet", "unet", "unetr", "swinunetr", "mednext_s", "mednext_l_k5", "nnunet"):
        assert name in out
    assert "5,551,178" in out  # MedNeXt-S k3, 10 classes, no deep supervision


def test_mednext_builds_without_importing_monai():
    """A MedNeXt is built from MONAI's own mednext files without `import monai` (whose __init__ imports
    every submodule: ~10 s per segmentation job); the same weights give the same output as MONAI's
    class, and MONAI imported afterwards is untouched."""
    code = (
        "import sys, torch\n"
        "from kneeflow import models\n"
        "arch = {'name': 'mednext_custom', 'out_channels': 3, 'init_filters': 8, 'blocks_down': [1, 1, 1, 1],\n"
        "        'blocks_bottleneck': 1, 'blocks_up': [1, 1, 1, 1], 'deep_supervision': True}\n"
        "torch.manual_seed(0)\n"
        "lean = models.build(arch).eval()\n"
        "assert not any(k == 'monai' or k.startswith('monai.') for k in sys.modules), 'monai imported'\n"
        "import monai.networks.nets.mednext as ref\n"
        "assert ref.__name__ == 'monai.networks.nets.mednext' and ref.MedNeXt is not type(lean)\n"
        "real = ref.MedNeXt(spatial_dims=3, in_channels=1, out_channels=3, kernel_size=3, deep_supervision=True,\n"
        "                   init_filters=8, blocks_down=[1, 1, 1, 1], blocks_bottleneck=1, blocks_up=[1, 1, 1, 1]).eval()\n"
        "real.load_state_dict(lean.state_dict())\n"
        "x = torch.randn(1, 1, 32, 32, 32)\n"
        "with torch.no_grad():\n"
        "    assert torch.equal(lean(x), real(x))\n"
        "print(type(lean).__module__, models.n_parameters(lean))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("kneeflow._monai_mednext ")
