"""Where a job runs: the compute device (light: only torch at call time)."""

from __future__ import annotations

__all__ = ["resolve_device"]

import logging
import os

log = logging.getLogger(__name__)


def resolve_device(requested: str) -> str:
    """"cuda" when asked for and available; otherwise "cpu", with a warning when a GPU was asked for.

    A SLURM job can be given a GPU that CUDA cannot see (a misconfigured node, or the tests' fake
    gres); the job then runs on the CPU and says so in its log instead of failing.
    """
    if requested == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    log.warning("a GPU was requested but CUDA is not available on %s (CUDA_VISIBLE_DEVICES=%s); running on the CPU",
                os.uname().nodename, os.environ.get("CUDA_VISIBLE_DEVICES"))
    return "cpu"
