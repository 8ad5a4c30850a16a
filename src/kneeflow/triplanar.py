"""The public knee neural shape model's triplanar decoder (ShapeMedKnee / gattia/nsm layout).

Built from a public ``model_params_config.json`` so that the public checkpoints load with their own
state_dict names and give the public code's signed distances:

* a "VAE decoder": the latent -> Linear -> ``conv_hidden_dims[0]`` channels of s x s
  (s = ``conv_deep_image_size``), then per entry of ``conv_hidden_dims`` a ConvTranspose2d (kernel 3,
  stride 2, padding 1, output padding 1) and a LayerNorm over [C, s^(i+2), s^(i+2)] or a BatchNorm2d,
  with no activation between blocks; a Conv2d (kernel 3, padding 1) to 3 x ``sdf_latent_size``
  channels and tanh;
* three feature planes in the channel order **xz, yz, xy**, each sampled at the query's coordinate
  pair divided by (1 + padding + 1e-5) (bilinear, border, align_corners=True); the samples are summed
  (``sum_conv_output_features``) or concatenated;
* an MLP on [features, xyz] (``sdf_hidden_dims``, weight-normed, ReLU) to ``objects_per_decoder``
  outputs and the final activation (tanh).

State dict names: ``vae_decoder.fc.*``, ``vae_decoder.layers.<i>.*`` and the same tensors again as
``vae_decoder.decoder.<i>.*`` (the public checkpoints carry both names; either set alone loads),
``sdf_decoder.layers.<i>.{weight_g, weight_v, bias}``.
"""

from __future__ import annotations

__all__ = ["TriplanarDecoder", "build_triplanar", "PUBLIC_DEFAULTS"]

import torch
from torch import nn
from torch.nn import functional as F

# the keys a public config may leave out, with the public code's defaults
PUBLIC_DEFAULTS = {
    "objects_per_decoder": 1,
    "conv_hidden_dims": [512, 512, 512, 512, 512],
    "conv_deep_image_size": 2,
    "conv_norm": True,
    "conv_norm_type": "batch",
    "conv_start_with_mlp": True,
    "sdf_latent_size": 128,
    "sdf_hidden_dims": [512, 512, 512],
    "weight_norm": True,
    "final_activation": "tanh",
    "activation": "relu",
    "dropout_prob": 0.0,
    "sum_conv_output_features": True,
    "conv_pred_sdf": False,
    "padding": 0.1,
}

_ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
                "softplus": nn.Softplus, "elu": nn.ELU, "selu": nn.SELU, "swish": nn.SiLU}


class _Sine(nn.Module):
    def forward(self, x):
        return torch.sin(30 * x)


def _activation(name: str | None) -> nn.Module | None:
    if name in (None, "linear"):
        return None
    if name == "sin":
        return _Sine()
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}")
    return _ACTIVATIONS[name]()


class WeightNormLinear(nn.Module):
    """Linear layer with weight = g * v / ||v|| (row norms); parameters named ``weight_g``, ``weight_v``."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        lin = nn.Linear(d_in, d_out)
        v = lin.weight.detach().clone()
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(v.norm(dim=1, keepdim=True))
        self.bias = nn.Parameter(lin.bias.detach().clone())

    def forward(self, x):
        w = self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)
        return F.linear(x, w, self.bias)


class _VAEDecoder(nn.Module):
    def __init__(self, latent_size: int, out_features: int, hidden_dims: list[int], image_size: int, norm: bool,
                 norm_type: str, start_with_mlp: bool):
        super().__init__()
        if latent_size % image_size**2:
            raise ValueError(f"latent_size {latent_size} must be divisible by conv_deep_image_size^2 = {image_size**2}")
        self.latent_size, self.hidden_dims, self.image_size = latent_size, list(hidden_dims), image_size
        self.start_with_mlp = start_with_mlp
        if start_with_mlp:
            self.fc = nn.Linear(latent_size, hidden_dims[0] * image_size**2)
            c_in = hidden_dims[0]
        else:
            c_in = latent_size // image_size**2
        blocks: list[nn.Module] = []
        for i, c_out in enumerate(hidden_dims):
            blocks.append(nn.ConvTranspose2d(c_in, c_out, kernel_size=3, stride=2, padding=1, output_padding=1))
            if norm:
                if norm_type == "batch":
                    blocks.append(nn.BatchNorm2d(c_out))
                elif norm_type == "layer":
                    side = image_size ** (i + 2)
                    blocks.append(nn.LayerNorm([c_out, side, side]))
                else:
                    raise ValueError(f"conv_norm_type must be 'batch' or 'layer', got {norm_type!r}")
            c_in = c_out
        blocks.append(nn.Sequential(nn.Conv2d(hidden_dims[-1], out_features, kernel_size=3, padding=1), nn.Tanh()))
        # the public checkpoints hold every block under two names: `layers` and `decoder`
        self.layers = nn.ModuleList(blocks)
        self.decoder = nn.Sequential(*blocks)
        self.register_load_state_dict_pre_hook(self._fill_aliases)

    @staticmethod
    def _fill_aliases(module, state_dict, prefix, *args):
        """Accept a state dict that holds the blocks under one of the two names only."""
        for have, want in (("layers.", "decoder."), ("decoder.", "layers.")):
            keys = [k for k in state_dict if k.startswith(prefix + have)]
            for k in keys:
                twin = prefix + want + k[len(prefix + have):]
                if twin not in state_dict:
                    state_dict[twin] = state_dict[k]

    def forward(self, z):
        if self.start_with_mlp:
            x = self.fc(z).view(-1, self.hidden_dims[0], self.image_size, self.image_size)
        else:
            x = z.view(-1, self.latent_size // self.image_size**2, self.image_size, self.image_size)
        return self.decoder(x)


class _SDFDecoder(nn.Module):
    def __init__(self, d_in: int, hidden: list[int], n_out: int, weight_norm: bool, activation: str,
                 final_activation: str, dropout_prob: float):
        super().__init__()
        dims = [d_in, *hidden, n_out]
        make = WeightNormLinear if weight_norm else nn.Linear
        self.layers = nn.ModuleList(make(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.activation = _activation(activation)
        if self.activation is None:
            raise ValueError(f"activation {activation!r} cannot be a hidden-layer activation")
        self.final_activation = _activation(final_activation)
        self.dropout_prob = float(dropout_prob)

    def forward(self, x):
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = self.activation(x)
                if self.dropout_prob:
                    x = F.dropout(x, p=self.dropout_prob, training=self.training)
        return x if self.final_activation is None else self.final_activation(x)


class TriplanarDecoder(nn.Module):
    """f(z, x): latents (B, L) and points (B, N, 3) in model space -> SDF (B, N, objects)."""

    PLANES = ((0, 2), (1, 2), (0, 1))  # xz, yz, xy: the channel order of every public checkpoint

    def __init__(self, cfg: dict):
        super().__init__()
        c = {**PUBLIC_DEFAULTS, **cfg}
        self.latent_size = int(c["latent_size"])
        self.n_objects = int(c["objects_per_decoder"])
        self.sum_features = bool(c["sum_conv_output_features"])
        self.pred_sdf = bool(c["conv_pred_sdf"])
        self.padding = float(c["padding"] if c["padding"] is not None else 0.1)
        sdf_latent = int(c["sdf_latent_size"])
        if self.sum_features:
            self.per_plane = sdf_latent
            out_features = 3 * sdf_latent + (3 if self.pred_sdf else 0)
        else:
            if sdf_latent % 3:
                raise ValueError(f"sdf_latent_size {sdf_latent} must be divisible by 3 when the planes are concatenated")
            if self.pred_sdf:
                raise ValueError("conv_pred_sdf needs sum_conv_output_features")
            self.per_plane = sdf_latent // 3
            out_features = sdf_latent
        self.vae_decoder = _VAEDecoder(self.latent_size, out_features, c["conv_hidden_dims"], int(c["conv_deep_image_size"]),
                                       bool(c["conv_norm"]), c["conv_norm_type"], bool(c["conv_start_with_mlp"]))
        self.sdf_decoder = _SDFDecoder(sdf_latent + 3, list(c["sdf_hidden_dims"]), self.n_objects, bool(c["weight_norm"]),
                                       c["activation"], c["final_activation"], float(c["dropout_prob"] or 0.0))

    def planes(self, z):
        """The feature planes of latents (B, L): (B, channels, H, W)."""
        return self.vae_decoder(z)

    def sample(self, planes, x):
        """Plane features at points x (B, N, 3): (B, N, features [+1 low-frequency SDF])."""
        width = self.per_plane + (1 if self.pred_sdf else 0)
        feats = []
        for k, (i, j) in enumerate(self.PLANES):
            uv = (x[..., [i, j]] / (1 + self.padding + 1e-5)).clamp(-1, 1)[:, :, None, :]  # (B, N, 1, 2)
            s = F.grid_sample(planes[:, k * width:(k + 1) * width], uv, mode="bilinear", padding_mode="border",
                              align_corners=True)
            feats.append(s[..., 0].transpose(1, 2))
        return sum(feats) if self.sum_features else torch.cat(feats, dim=-1)

    def forward(self, z, x):
        f = self.sample(self.planes(z), x)
        low = None
        if self.pred_sdf:
            low, f = f[..., :1], f[..., 1:]
        sdf = self.sdf_decoder(torch.cat([f, x], dim=-1))
        return sdf if low is None else sdf + low


def build_triplanar(cfg: dict) -> TriplanarDecoder:
    """The public decoder a ``model_params_config.json`` describes (no weights)."""
    missing = [k for k in ("latent_size",) if k not in cfg]
    if missing:
        raise ValueError(f"triplanar config lacks {missing}")
    return TriplanarDecoder(cfg)
