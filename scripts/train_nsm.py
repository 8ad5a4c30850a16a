"""Train the femur neural shape model on the train split's bone meshes (one latent per knee)."""

import logging
from pathlib import Path

from kneeflow import shape, surface
from kneeflow.device import resolve_device
from kneeflow.workflow.rule import run


def main(sm):
    import torch

    cfg = {"decoder": "deepsdf", "surfaces": ["femur"], "latent_size": 16, **dict(sm.params.train)}
    torch.set_num_threads(int(cfg.pop("threads", 1)))
    knees = {s: {k: surface.load_surface(Path(d) / f"{k}.vtk") for k in cfg["surfaces"]}
             for s, d in zip(sm.params.samples, sm.input.meshes)}
    sides = dict(zip(sm.params.samples, sm.params.sides))
    device = resolve_device(sm.params.device)
    model = shape.train(knees, sides, cfg, device=device,
                        progress=lambda i, n, loss: logging.getLogger("train_nsm").info("step %d/%d loss %.5f", i, n, loss))
    shape.save_model(model, Path(sm.output.checkpoint).parent)


run(snakemake, main)  # noqa: F821
