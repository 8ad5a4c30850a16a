"""The model registry: a name -> a builder of a segmentation network, and safe checkpoints.

    python -m kneeflow.models list            # names, defaults, parameter counts

A checkpoint is a ``.pt`` file holding only tensors and strings, loadable with
``torch.load(weights_only=True)``: ``{"state_dict": {...}, "meta": "<json>"}``. The JSON carries what
inference and export need: the architecture config (registry name + kwargs), label convention,
patch size, spacing and intensity normalisation.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "REGISTRY", "build", "file_sha256", "load_checkpoint", "load_model", "main",
           "monai_mednext", "n_parameters", "resolve_device", "save_checkpoint"]

import argparse
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from kneeflow.optional import require
from kneeflow.checksum import sha256 as file_sha256  # noqa: F401 - one hashing function, re-exported
from kneeflow.device import resolve_device  # noqa: F401 - re-exported

log = logging.getLogger(__name__)



# ---------------------------------------------------------------------------------------------- builders


def _basicunet(in_channels=1, out_channels=10, features=(32, 32, 64, 128, 256, 32), **kw):
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, features=tuple(features), **kw)


def _unet(in_channels=1, out_channels=10, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2, **kw):
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, channels=tuple(channels),
                strides=tuple(strides), num_res_units=num_res_units, **kw)


def _unetr(in_channels=1, out_channels=10, img_size=(64, 64, 64), feature_size=16, hidden_size=768, mlp_dim=3072,
           num_heads=12, **kw):
    from monai.networks.nets import UNETR

    return UNETR(in_channels=in_channels, out_channels=out_channels, img_size=tuple(img_size), feature_size=feature_size,
                 hidden_size=hidden_size, mlp_dim=mlp_dim, num_heads=num_heads, **kw)


def _swinunetr(in_channels=1, out_channels=10, feature_size=24, **kw):
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(in_channels=in_channels, out_channels=out_channels, feature_size=feature_size, spatial_dims=3, **kw)


def monai_mednext():
    """MONAI's ``monai.networks.nets.mednext`` module (MedNeXt, create_mednext).

    Its two files (the network and its blocks) import only torch, while ``import monai`` imports every
    MONAI submodule and the optional packages they find (transformers, torchvision, ignite,
    jsonschema's format checkers, ...): ~10 s of each segmentation and export job. Without MONAI
    imported, the two files are run from the installed package as they are (the same classes, the same
    state_dict keys); with it imported, MONAI's own module.
    """
    from kneeflow.optional import module_from_package_file

    block = module_from_package_file("monai", "networks/blocks/mednext_block.py",
                                     name="kneeflow._monai_mednext_block", env="envs/segment.yaml")
    return module_from_package_file("monai", "networks/nets/mednext.py", name="kneeflow._monai_mednext",
                                    needs={"monai.networks.blocks.mednext_block": block}, env="envs/segment.yaml")


def _mednext(variant: str | None = "S", in_channels=1, out_channels=10, kernel_size=3, deep_supervision=False, **kw):
    """MedNeXt (MONAI). ``variant`` S/B/M/L as in the paper; ``variant=None`` + kwargs for a custom size."""
    mod = monai_mednext()
    MedNeXt, create_mednext = mod.MedNeXt, mod.create_mednext

    if variant:
        return create_mednext(variant, spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                              kernel_size=kernel_size, deep_supervision=deep_supervision)
    return MedNeXt(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                   deep_supervision=deep_supervision, **kw)


def _nnunet(plans: str, configuration: str = "3d_fullres", in_channels: int = 1, out_channels: int | None = None,
            deep_supervision: bool = False, dataset_json: str | None = None, **_):
    """An nnU-Net v2 network (PlainConvUNet, ResidualEncoderUNet, ...) from a plans file."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    p = Path(plans)
    if not p.exists():
        raise FileNotFoundError(f"{p}: nnU-Net plans file not found")
    pl = json.loads(p.read_text())
    if configuration not in pl.get("configurations", {}):
        raise ValueError(f"{p}: no configuration {configuration!r}; has {sorted(pl.get('configurations', {}))}")
    conf = pl["configurations"][configuration]
    while "inherits_from" in conf and "architecture" not in conf:
        conf = {**pl["configurations"][conf["inherits_from"]], **{k: v for k, v in conf.items() if k != "inherits_from"}}
    arch = conf["architecture"]
    if out_channels is None:
        if not dataset_json:
            raise ValueError("nnU-Net builder needs out_channels or dataset_json")
        out_channels = len(json.loads(Path(dataset_json).read_text())["labels"])
    return get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                  in_channels, out_channels, allow_init=True, deep_supervision=deep_supervision)


REGISTRY: dict[str, tuple[Callable, dict]] = {
    "basicunet": (_basicunet, {}),
    "unet": (_unet, {}),
    "unetr": (_unetr, {}),
    "swinunetr": (_swinunetr, {}),
    **{f"mednext_{v.lower()}{'' if k == 3 else '_k5'}": (_mednext, {"variant": v, "kernel_size": k})
       for v in "SBML" for k in (3, 5)},
    "mednext_custom": (_mednext, {"variant": None}),
    "nnunet": (_nnunet, {}),
}


def build(arch: dict):
    """Build a network from ``{"name": <registry name>, **kwargs}``."""
    arch = dict(arch)
    name = arch.pop("name", None)
    if name not in REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; the registry has {sorted(REGISTRY)}")
    fn, defaults = REGISTRY[name]
    return fn(**{**defaults, **arch})


def n_parameters(net) -> int:
    return int(sum(p.numel() for p in net.parameters()))


# ---------------------------------------------------------------------------------------------- checkpoints


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, unsafe, incomplete or failing its checksum."""


def save_checkpoint(path: str | os.PathLike, state_dict: dict, meta: dict, extra: dict | None = None) -> None:
    """Write atomically: tensors + a JSON string (weights-only loadable)."""
    torch = require("torch")
    from kneeflow.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"state_dict": state_dict, "meta": json.dumps(meta, sort_keys=True), **(extra or {})}, tmp)


def load_checkpoint(path: str | os.PathLike, sha256: str | None = None, map_location="cpu") -> tuple[dict, dict]:
    """Load ``(state_dict, meta)`` with ``weights_only=True``; verify ``sha256`` when given.

    A pickle that needs code to load (anything but tensors, numbers, strings and containers) is
    refused, as is a file whose checksum differs from the one the config gives.
    """
    torch = require("torch")
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint not found")
    if sha256:
        got = file_sha256(p)
        if got != sha256.lower():
            raise CheckpointError(f"{p}: sha256 mismatch: expected {sha256}, got {got}")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{p}: not a safe weights-only checkpoint or corrupt ({type(e).__name__}: {first[:200]})") from None
    if not isinstance(obj, dict) or "state_dict" not in obj or "meta" not in obj:
        raise CheckpointError(f"{p}: not a kneeflow checkpoint (expected keys state_dict and meta)")
    return obj["state_dict"], json.loads(obj["meta"])


def load_model(path: str | os.PathLike, sha256: str | None = None, map_location="cpu"):
    """Build the network a checkpoint describes and load its weights; returns (net, meta)."""
    state, meta = load_checkpoint(path, sha256, map_location)
    net = build(meta["arch"])
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the architecture (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return net.eval(), meta


# ---------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m kneeflow.models")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", help="list the registry with parameter counts")
    ls.add_argument("--classes", type=int, default=10)
    a = ap.parse_args(argv)
    if a.cmd == "list":
        print(f"{'name':16s} {'defaults':40s} {'parameters':>12s}")
        for name, (_, defaults) in REGISTRY.items():
            if name in ("nnunet", "mednext_custom"):
                print(f"{name:16s} {'(needs a plans file)' if name == 'nnunet' else '(kwargs)':40s} {'-':>12s}")
                continue
            net = build({"name": name, "out_channels": a.classes})
            print(f"{name:16s} {json.dumps(defaults):40s} {n_parameters(net):12,d}")


if __name__ == "__main__":
    main()
