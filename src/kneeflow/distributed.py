"""Data-parallel training across processes: the process group from the launcher's environment.

``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; ``srun`` (one task per
GPU) sets SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID, and the rendezvous address is the step's first
node with a port from the job id. One process, without either: no process group. NCCL on GPUs, gloo on
CPUs. Each rank draws its share of the global batch (``kneeflow.training.patch_rng``), DDP averages
the gradients, rank 0 validates, logs and writes checkpoints.
"""

from __future__ import annotations

__all__ = ["World", "world_from_env", "init", "shutdown"]

import logging
import os
import subprocess
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    launcher: str = "none"

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> range:
        """The indices of a global batch of ``n`` this rank draws (``n`` divisible by the size)."""
        if n % self.size:
            raise ValueError(f"the global batch ({n}) must divide among {self.size} processes")
        k = n // self.size
        return range(self.rank * k, (self.rank + 1) * k)


def world_from_env(env=None) -> World:
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env and "RANK" in env:
        return World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), "torchrun")
    if int(env.get("SLURM_NTASKS", 1)) > 1 and "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        return World(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)), "srun")
    return World()


def _slurm_rendezvous(env) -> None:
    """MASTER_ADDR / MASTER_PORT for an srun step, unless set: the step's first host, a port from the job id."""
    if "MASTER_ADDR" not in env:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "localhost"
        try:
            first = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True,
                                   check=True).stdout.split()[0]
        except (OSError, subprocess.CalledProcessError, IndexError):
            first = nodes.split(",")[0]
        env["MASTER_ADDR"] = first
    env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", 0)) % 20000))


def init(world: World, device: str) -> str:
    """Join the process group (a no-op for one process); returns this rank's device."""
    if world.size == 1:
        return device
    import torch
    import torch.distributed as dist

    if world.launcher == "srun":
        _slurm_rendezvous(os.environ)
        os.environ.setdefault("RANK", str(world.rank))
        os.environ.setdefault("WORLD_SIZE", str(world.size))
    if device.startswith("cuda"):
        torch.cuda.set_device(world.local_rank)
        device = f"cuda:{world.local_rank}"
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=world.rank, world_size=world.size)
    log.info("rank %d of %d (%s, %s) on %s", world.rank, world.size, world.launcher, backend, device)
    return device


def barrier(world: World) -> None:
    if world.size > 1:
        import torch.distributed as dist

        dist.barrier()


def shutdown(world: World) -> None:
    if world.size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
