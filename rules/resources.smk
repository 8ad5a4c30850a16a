# Resources: memory and runtime that grow with the attempt, and the GPU request of GPU stages.


def per_attempt(base):
    """Memory (MB) or runtime (minutes) that grows with the attempt, so that `--retries` recovers
    from an out-of-memory kill or a time-out."""
    return fixed_signature(lambda wildcards, attempt: base * attempt)


DEVICE = "cuda" if config["resources"]["gpu"] else "cpu"
# GPU stages ask SLURM for a GPU (the executor plugin's `gpu` resource) when the config says so
GPU_RESOURCES = (
    {
        "gpu": 1,
        "slurm_partition": config["resources"]["gpu_partition"],
        **(
            {"gpu_model": config["resources"]["gpu_model"]}
            if config["resources"]["gpu_model"]
            else {}
        ),
    }
    if DEVICE == "cuda"
    else {}
)

# Training across processes (kneeflow.distributed): gpus_per_node x nodes ranks (CPU ranks without a
# GPU). More than one: the job asks SLURM for that many tasks (`mpi`, so the SLURM plugin runs the
# command as is) and `kneeflow train --processes N` starts them with `srun` inside a SLURM job,
# with `torchrun` elsewhere.
TRAIN_PROCESSES = config["resources"]["gpus_per_node"] * config["resources"]["nodes"]
TRAIN_RESOURCES = {
    **GPU_RESOURCES,
    **({"gpu": TRAIN_PROCESSES, "tasks_per_gpu": 1} if DEVICE == "cuda" else {}),
    **({"tasks": TRAIN_PROCESSES, "mpi": "srun"} if TRAIN_PROCESSES > 1 else {}),
    **(
        {"nodes": config["resources"]["nodes"]}
        if config["resources"]["nodes"] > 1
        else {}
    ),
}
