"""Data-parallel training (issue 21): the launcher's environment, and 2 gloo processes = 1 process with
the same global batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

from kneeflow import models, phantom
from kneeflow.distributed import World, world_from_env

TINY = {"name": "mednext_custom", "init_filters": 4, "blocks_down": [1, 1, 1, 1], "blocks_bottleneck": 1,
        "blocks_up": [1, 1, 1, 1], "kernel_size": 3, "deep_supervision": True}


def test_world_from_the_launchers_environment():
    assert world_from_env({}) == World()
    assert world_from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == World(1, 4, 1, "torchrun")
    slurm = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0"}
    assert world_from_env(slurm) == World(3, 4, 1, "srun")
    # a one-task SLURM job, or the batch script itself (no step): one process
    assert world_from_env({**slurm, "SLURM_NTASKS": "1"}) == World()
    assert world_from_env({k: v for k, v in slurm.items() if k != "SLURM_STEP_ID"}) == World()
    w = World(1, 2)
    assert list(w.share(4)) == [2, 3] and list(World().share(4)) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="divide"):
        World(0, 3).share(4)


def test_batch_dice_is_monais_and_not_the_per_patch_dice():
    import torch
    from monai.losses import DiceCELoss

    from kneeflow.training import BatchDiceCELoss

    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (2, 1, 6, 6, 6), generator=g)
    target[1, 0, :2, :2, :2] = 3  # class 3 in one patch only
    # a fair prediction: the target's class favoured, noise on top
    logits = 3.0 * torch.nn.functional.one_hot(target[:, 0], 4).movedim(-1, 1).double()
    logits += torch.randn(2, 4, 6, 6, 6, generator=g, dtype=torch.float64)
    values, grads = [], []
    for fn in (BatchDiceCELoss(), DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True),
               DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)):
        x = logits.clone().requires_grad_(True)
        loss = fn(x, target)
        loss.backward()
        values.append(float(loss))
        grads.append(x.grad)
    assert values[0] == pytest.approx(values[1], rel=1e-9)
    assert torch.allclose(grads[0], grads[1], atol=1e-12)
    assert abs(values[0] - values[2]) > 0.01  # per patch, the patch without class 3 counts it as missed


def _cases(tmp: Path):
    cases = []
    for seed in (71, 72):
        d = tmp / f"c{seed}"
        phantom.write(phantom.synthesize(seed, "right", 0.0, spacing=2.0, mese=False), d)
        cases.append((str(d / "image.nii.gz"), str(d / "labels.nii.gz")))
    return cases


def _code(cases, epochs=1, iterations=5, dtype="float64"):
    return (
        "import sys, logging; sys.path.insert(0, %r); logging.basicConfig(level=logging.INFO)\n"
        "import torch; torch.use_deterministic_algorithms(True)\n"
        "from kneeflow.training import TrainConfig, train\n"
        "cfg = TrainConfig(arch=%r, patch_size=(32, 32, 32), batch_size=2, epochs=%d, iterations_per_epoch=%d,\n"
        "                  threads=1, seed=5, val_every=100, dtype=%r)\n"
        "train(%r, [], sys.argv[1], cfg)\n" % (str(ROOT / "src"), TINY, epochs, iterations, dtype, cases)
    )


def _torchrun(n, port):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-port", str(port)]


def _run(cmd, out, port=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run((_torchrun(2, port) if port else [sys.executable]) + cmd + [str(out)], capture_output=True,
                       text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path):
    import torch

    cases = _cases(tmp_path)
    for dtype in ("float64", "float32"):
        script = tmp_path / f"train_{dtype}.py"
        script.write_text(_code(cases, dtype=dtype))
        _run([str(script)], tmp_path / f"one_{dtype}")
        two = _run([str(script)], tmp_path / f"two_{dtype}", port=29517)
        assert "rank 1 of 2 (torchrun, gloo)" in two.stderr
    a, _ = models.load_checkpoint(tmp_path / "one_float64" / "checkpoint.pt")
    b, _ = models.load_checkpoint(tmp_path / "two_float64" / "checkpoint.pt")
    worst = max(float(np.abs(a[k].numpy() - b[k].numpy()).max()) for k in a)
    assert worst < 1e-5, worst
    # the training moved the weights (not a comparison of two initial states)
    torch.manual_seed(5)
    init = models.build({**TINY, "out_channels": 10}).double().state_dict()
    assert max(float(np.abs(a[k].numpy() - init[k].numpy()).max()) for k in a) > 1e-3
    la, lb = (float((tmp_path / d / "metrics.csv").read_text().splitlines()[1].split(",")[1])
              for d in ("one_float64", "two_float64"))
    assert la == pytest.approx(lb, rel=1e-9)  # the logged loss is the global batch's
    # float32: weights that no output depends on may differ (see TrainConfig.dtype); the outputs agree
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    outs = []
    for d in ("one_float32", "two_float32"):
        net, _ = models.load_model(tmp_path / d / "checkpoint.pt")
        with torch.no_grad():
            out = net.eval()(x)
        outs.append((out[0] if isinstance(out, (list, tuple)) else out).numpy())
    assert np.abs(outs[0] - outs[1]).max() < 1e-3 * np.abs(outs[0]).max(), np.abs(outs[0] - outs[1]).max()


@pytest.mark.slow
def test_a_killed_two_process_run_resumes(tmp_path):
    cases = _cases(tmp_path)
    script = tmp_path / "train.py"
    script.write_text(_code(cases, epochs=3, iterations=3))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run(_torchrun(2, 29518) + [str(script), str(tmp_path / "ref")], capture_output=True, text=True,
                         timeout=600, env=env)
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "killed"
    p = subprocess.Popen(_torchrun(2, 29519) + [str(script), str(out)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "optimizer_last.pt").exists():
        time.sleep(0.05)
    # the launcher and both ranks (torchrun starts each rank in its own session)
    os.killpg(p.pid, signal.SIGKILL)
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(script).encode() in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass
    p.wait()
    _, meta = models.load_checkpoint(out / "checkpoint_last.pt")
    assert meta["epoch"] < 2
    r = subprocess.run(_torchrun(2, 29520) + [str(script), str(out)], capture_output=True, text=True, timeout=600,
                       env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in r.stderr
    a, _ = models.load_checkpoint(tmp_path / "ref" / "checkpoint.pt")
    b, _ = models.load_checkpoint(out / "checkpoint.pt")
    for k in a:
        assert np.allclose(a[k].numpy(), b[k].numpy(), atol=1e-6), k


@pytest.mark.slow
def test_kneeflow_train_processes_starts_the_ranks(tmp_path):
    """`kneeflow train --processes 2` (what the workflow's rule runs) starts 2 ranks with torchrun outside
    SLURM: the same weights as one process, one log with both ranks, provenance beside the checkpoint.
    With the batch Dice (the demo's loss), whose sums the ranks all-reduce: per-rank batch Dice would
    train other weights."""
    import json

    cases = _cases(tmp_path)
    settings = json.dumps({"arch": TINY, "patch_size": [32, 32, 32], "batch_size": 2, "epochs": 1,
                           "iterations_per_epoch": 3, "threads": 1, "seed": 5, "val_every": 100, "dtype": "float64",
                           "dice_batch": True})
    kneeflow = str(Path(sys.executable).with_name("kneeflow"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["OMP_NUM_THREADS"] = "1"
    for n in (1, 2):
        out = tmp_path / f"p{n}"
        r = subprocess.run([kneeflow, "train", "--settings", settings, "--images", *[c[0] for c in cases],
                            "--labels", *[c[1] for c in cases], "--processes", str(n), "--out", str(out),
                            "--log", str(tmp_path / f"p{n}.log")], capture_output=True, text=True, timeout=600, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
    log = (tmp_path / "p2.log").read_text()
    assert "starting 2 ranks" in log and "rank 0 of 2" in log and "rank 1 of 2" in log
    a, _ = models.load_checkpoint(tmp_path / "p1" / "checkpoint.pt")
    b, _ = models.load_checkpoint(tmp_path / "p2" / "checkpoint.pt")
    assert max(float(np.abs(a[k].numpy() - b[k].numpy()).max()) for k in a) < 1e-5
    rec = json.loads((tmp_path / "p2" / "checkpoint.pt.prov.json").read_text())
    assert rec["params"]["processes"] == 2 and rec["rule"] == "train"
    assert (tmp_path / "p2" / "checkpoint_best.pt").exists() is False  # no validation cases: no best epoch
