"""`snakemake --profile profiles/slurm` against a real one-node SLURM (slurm-wlm on loopback).

The fixture brings the cluster up with tests/cluster/slurm_local.sh and always takes it down. The
run is a reduced demo (2 knees, a tiny model) with GPUs enabled in the config: the GPU stages must be
submitted to the gpu partition with a GPU request, the CPU stages to the cpu partition, the model
trains as 2 data-parallel ranks (2 SLURM tasks started by srun; CPU, gloo: the fake GPUs have no
CUDA), a job cancelled by SLURM must be retried with more memory, and the tables must equal a local
run's (whose training ranks torchrun starts).
"""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from kneeflow import phantom

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
SCRIPT = ROOT / "tests" / "cluster" / "slurm_local.sh"

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if shutil.which("slurmctld") is None:
        if os.geteuid() != 0:
            pytest.fail("slurm-wlm is not installed and this user cannot install it (tests/cluster/slurm_local.sh install)")
        subprocess.run(["bash", str(SCRIPT), "install"], check=True, timeout=900)
    state = Path("/tmp/kneeflow-slurm-test")
    subprocess.run(["bash", str(SCRIPT), "down", str(state)], capture_output=True)
    shutil.rmtree(state, ignore_errors=True)
    subprocess.run(["bash", str(SCRIPT), "up", str(state)], check=True, timeout=180)
    env = {**os.environ, "SLURM_CONF": str(state / "slurm.conf")}
    yield env
    subprocess.run(["bash", str(SCRIPT), "down", str(state)], capture_output=True, timeout=120)
    left = subprocess.run(["pgrep", "-f", f"{state}/slurm.conf"], capture_output=True, text=True).stdout.strip()
    assert not left, f"daemons left behind: {left}"


def _study(wd: Path):
    data = wd.parent / "data"
    rows = []
    for i, (seed, split) in enumerate(((71, "train"), (72, "train"), (73, "test"))):
        d = data / f"c{i}"
        if not d.exists():
            phantom.write(phantom.synthesize(seed, "right", 0.3 * i, spacing=1.5, mese=True), d)
        rows.append({"sample": f"c{i}", "side": "right", "image": f"../../data/c{i}/image.nii.gz",
                     "echoes": f"../../data/c{i}/echoes.nii.gz", "labels": f"../../data/c{i}/labels.nii.gz",
                     "label_convention": "canonical", "reference_labels": f"../../data/c{i}/labels.nii.gz", "split": split})
    (wd / "config").mkdir(parents=True)
    shutil.copy(ROOT / "config" / "config.yaml", wd / "config" / "config.yaml")
    cols = list(rows[0])
    (wd / "config" / "samples.tsv").write_text(
        "\n".join(["\t".join(cols)] + ["\t".join(r[c] for c in cols) for r in rows]) + "\n")
    cfg = {
        "samples": "config/samples.tsv", "allowed_roots": [".."],
        "thickness": {"activate": True, "ray_in_mm": 2.5, "ray_out_mm": 10.0, "femoral_subregions": False},
        "mesh": {"bone_smooth_var_mm2": 0.5, "cartilage_smooth_var_mm2": 0.3125,
                 "n_points": {"femur": 3000, "tibia": 3000, "patella": 1500}},
        "segmentation": {"activate": True, "batch_size": 4, "validation_cases": 1, "mirror": False, "models": {
            "tiny": {"train": {"arch": {"name": "mednext_custom", "init_filters": 4, "blocks_down": [1, 1, 1, 1],
                                        "blocks_bottleneck": 1, "blocks_up": [1, 1, 1, 1], "deep_supervision": True},
                               "patch_size": [32, 32, 32], "epochs": 1, "iterations_per_epoch": 2, "threads": 1}}}},
        # training as 2 data-parallel ranks: 2 SLURM tasks (srun) on the cluster, torchrun locally
        "resources": {"gpu": True, "gpu_model": "", "gpu_partition": "gpu", "gpus_per_node": 2, "nodes": 1},
    }
    (wd / "config" / "run.yaml").write_text(yaml.safe_dump(cfg))
    return wd


def _run(wd, env, *extra, timeout=1500):
    # the SLURM plugin ignores SIGTERM: kill it for sure after the timeout
    cmd = ["timeout", "-k", "20", str(timeout), SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-d", str(wd),
           "--configfile", "config/run.yaml", *extra]
    return subprocess.run(cmd, cwd=wd, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def runs(slurm, tmp_path_factory):
    base = tmp_path_factory.mktemp("cluster")
    local = _study(base / "local")
    r_local = _run(local, slurm, "--cores", "2")
    assert r_local.returncode == 0, r_local.stderr[-3000:]
    wd = _study(base / "slurm")
    cancelled = {}

    def cancel_first_thickness_job():
        # wait until a thickness job runs on the cluster, then cancel it once
        deadline = time.time() + 900
        while time.time() < deadline and not cancelled:
            q = subprocess.run(["squeue", "-h", "-o", "%i %j %T %k"], env=slurm, capture_output=True, text=True).stdout
            for line in q.splitlines():
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "RUNNING" and "thickness" in line:
                    subprocess.run(["scancel", parts[0]], env=slurm)
                    cancelled["job"] = parts[0]
                    return
            time.sleep(0.5)

    t = threading.Thread(target=cancel_first_thickness_job, daemon=True)
    t.start()
    r = _run(wd, slurm, "--profile", str(ROOT / "profiles" / "slurm"), "--slurm-keep-successful-logs",
             "--default-resources", "slurm_partition=cpu", "mem_mb=1000", "runtime=30", "tmpdir=/tmp")
    t.join(timeout=5)
    return local, wd, r, cancelled


def test_cluster_run_completes(runs):
    _, wd, r, _ = runs
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert (wd / "results" / "provenance.tsv").exists()


def test_gpu_stages_ran_in_the_gpu_partition_with_a_gpu(runs):
    _, wd, _, _ = runs
    ck = json.loads((wd / "results" / "models" / "tiny" / "checkpoint.pt.prov.json").read_text())
    assert ck["device"]["slurm"]["job_partition"] == "gpu"
    # the training job asked for 2 GPUs (2 data-parallel ranks)
    assert ck["device"]["slurm"].get("gpus_on_node") == "2" or "gpu:2" in ck["device"]["slurm"].get("job_gpus", "")
    seg = json.loads((wd / "results" / "c2" / "labels" / "tiny.nii.gz.prov.json").read_text())
    # the labels were segmented by the batch job on the GPU partition (then checked and written locally)
    assert seg["segmented_by"]["device"]["slurm"]["job_partition"] == "gpu"
    assert seg["segmented_by"]["rule"].startswith("segment_tiny_")
    th = json.loads((wd / "results" / "c0" / "thickness.csv.prov.json").read_text())
    assert th["device"]["slurm"]["job_partition"] == "cpu"
    assert "gpus_on_node" not in th["device"]["slurm"]


def test_training_ran_as_two_slurm_tasks(runs):
    local, wd, _, _ = runs
    ck = json.loads((wd / "results" / "models" / "tiny" / "checkpoint.pt.prov.json").read_text())
    assert ck["params"]["processes"] == 2
    log = (wd / "results" / "logs" / "train_model" / "tiny.log").read_text()
    assert "starting 2 ranks: srun --ntasks=2" in log, log[-2000:]
    assert "rank 0 of 2 (srun, gloo)" in log and "rank 1 of 2 (srun, gloo)" in log
    local_log = (local / "results" / "logs" / "train_model" / "tiny.log").read_text()
    assert "rank 1 of 2 (torchrun, gloo)" in local_log


def test_tables_equal_the_local_run(runs):
    local, wd, _, _ = runs
    for t in ("thickness.csv", "t2.csv", "dice.csv", "qc.csv"):
        assert (wd / "results" / "tables" / t).read_bytes() == (local / "results" / "tables" / t).read_bytes(), t


def test_cancelled_job_is_retried_with_more_memory(runs):
    _, wd, r, cancelled = runs
    assert cancelled, "no thickness job was seen running to cancel"
    assert "Trying to restart job" in r.stdout + r.stderr
    logs = {p.parent.name: p for p in (wd / ".snakemake" / "slurm_logs" / "rule_thickness").glob("*/*.log")}
    victim = next(p.parent.name for p in (wd / ".snakemake" / "slurm_logs" / "rule_thickness").glob(f"*/{cancelled['job']}.log"))
    assert logs
    for sample in ("c0", "c1", "c2"):
        rec = json.loads((wd / "results" / sample / "thickness.csv.prov.json").read_text())
        # thickness asks for 3000 MB x attempt: the cancelled sample finished on its second attempt
        assert rec["resources"]["mem_mb"] == (6000 if sample == victim else 3000), (sample, rec["resources"])
        assert rec["device"]["slurm"]["job_id"] != cancelled["job"]
