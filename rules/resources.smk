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
