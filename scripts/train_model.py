"""Train a registry network on the training split; resumable (checkpoint_last.pt)."""

from pathlib import Path

from kneeflow.models import resolve_device
from kneeflow.training import TrainConfig, train
from kneeflow.workflow.rule import run


def main(sm):
    p = sm.params
    cfg = TrainConfig(**p.train)
    train(list(zip(p.train_images, p.train_labels)), list(zip(p.val_images, p.val_labels, p.val_sides)),
          Path(sm.output.checkpoint).parent, cfg, device=resolve_device(p.device))


run(snakemake, main)  # noqa: F821
