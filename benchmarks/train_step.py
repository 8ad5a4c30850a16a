"""Training step time and peak memory per setting, for MedNeXt-S at 128^3 batch 2 and the demo's net.

    .venv/bin/python benchmarks/train_step.py                      # CPU: threads, bf16 autocast
    .venv/bin/python benchmarks/train_step.py --device cuda        # GPU: fp32, bf16, fp16, compile
    .venv/bin/python benchmarks/train_step.py --nets demo --steps 5

One step is what kneeflow.training.train does per iteration: a batch of augmented patches from a
synthetic knee (kneeflow.augment, nnU-Net's defaults), forward, Dice + CE with deep supervision,
backward, gradient clipping, AdamW. Each setting runs --warmup steps, then --steps timed steps (the
median counts); peak memory is the process's peak resident memory growth on CPU (ru_maxrss, so
settings run in separate processes; the knee is synthesised once and loaded) and torch.cuda.max_memory_allocated on GPU. MedNeXt-S at 128^3
does not fit a 2-core CPU's time budget: on CPU it runs at --cpu-patch (default 64^3) and says so.
Prints a table and writes train_step.json.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NETS = {
    "mednext_s": ({"name": "mednext_s", "deep_supervision": True}, (128, 128, 128), 2),
    # config/demo.yaml's network, patch and batch
    "demo": ({"name": "mednext_custom", "init_filters": 8, "blocks_down": [1, 1, 1, 1], "blocks_bottleneck": 1,
              "blocks_up": [1, 1, 1, 1], "kernel_size": 3, "deep_supervision": True}, (32, 32, 32), 2),
}


def settings(device: str) -> list[dict]:
    if device == "cuda":
        return [{"name": "fp32"}, {"name": "bf16 autocast", "amp": "bf16"}, {"name": "fp16 autocast + scaler", "amp": "fp16"},
                {"name": "bf16 + torch.compile", "amp": "bf16", "compile": True},
                {"name": "bf16 + channels_last_3d", "amp": "bf16", "channels_last": True}]
    return [{"name": "fp32, 1 thread", "threads": 1},
            {"name": "fp32 channels-last, 1 thread", "threads": 1, "channels_last": True},
            {"name": "fp32, 2 threads", "threads": 2},
            {"name": "bf16 autocast, 2 threads", "threads": 2, "amp": "bf16"},
            {"name": "fp32, 2 threads, no augmentation", "threads": 2, "augment": "off"}]


def knee(out: Path) -> Path:
    """A synthetic knee (0.8 mm) saved once, so each setting's process starts small (peak memory)."""
    import numpy as np

    from kneeflow import phantom
    from kneeflow.preprocessing import normalise

    path = out / "knee.npz"
    if not path.exists():
        k = phantom.synthesize(3, "right", 0.3, spacing=0.8, mese=False)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(path, image=normalise(k.image), labels=k.labels.astype(np.uint8))
    return path


def one(net_name: str, setting: dict, device: str, warmup: int, steps: int, cpu_patch: int, data: Path) -> dict:
    import numpy as np
    import torch
    from monai.losses import DiceCELoss

    from kneeflow import models
    from kneeflow.augment import Augment
    from kneeflow.training import PatchSampler, deep_supervision_loss, patch_rng

    arch, patch, batch = NETS[net_name]
    if device == "cpu" and max(patch) > cpu_patch:
        patch = (cpu_patch,) * 3
    if setting.get("threads"):
        torch.set_num_threads(setting["threads"])
    with np.load(data) as d:
        img, lab = d["image"], d["labels"]
    aug = Augment(**{k: 0.0 for k in Augment().as_dict() if k.endswith("_p")}) if setting.get("augment") == "off" else Augment()
    sampler = PatchSampler([(img, lab)], patch, 0.33, aug)
    torch.manual_seed(0)
    dev = torch.device(device)
    net = models.build({**arch, "out_channels": 10}).to(dev)
    if setting.get("channels_last"):
        net = net.to(memory_format=torch.channels_last_3d)
    step_net = torch.compile(net) if setting.get("compile") else net
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(setting.get("amp"))
    scaler = torch.amp.GradScaler(device) if setting.get("amp") == "fp16" else None
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, sample_times = [], []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        b = [sampler.sample(patch_rng(0, step, i)) for i in range(batch)]
        t1 = time.perf_counter()
        x = torch.from_numpy(np.stack([p[0] for p in b])[:, None]).to(dev)
        y = torch.from_numpy(np.stack([p[1] for p in b])[:, None].astype(np.int64)).to(dev)
        if setting.get("channels_last"):
            x = x.to(memory_format=torch.channels_last_3d)
        with torch.autocast(device_type=dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = deep_supervision_loss(step_net(x), y, loss_fn, (1.0, 0.5, 0.25, 0.125, 0.0625))
        opt.zero_grad(set_to_none=True)
        if scaler:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
            opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
            sample_times.append(t1 - t0)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024)
    return {"net": net_name, "setting": setting["name"], "device": device, "patch": list(patch), "batch": batch,
            "step_s": round(statistics.median(times), 4), "sampling_s": round(statistics.median(sample_times), 4),
            "peak_mb": round(peak, 1), "loss": round(float(loss.detach()), 4), "steps": steps,
            "parameters": models.n_parameters(net)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--cpu-patch", type=int, default=64, help="largest patch side on CPU (MedNeXt-S: 128 on GPU)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # net|setting index: run one setting in this process
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "train_step"))
    a = ap.parse_args()
    if a.one:
        net, i = a.one.split("|")
        print(json.dumps(one(net, settings(a.device)[int(i)], a.device, a.warmup, a.steps, a.cpu_patch,
                            Path(a.out) / "knee.npz")))
        return
    knee(Path(a.out))
    rows = []
    for net in a.nets:
        for i, s in enumerate(settings(a.device)):
            # one process per setting: peak memory and torch's thread pool are per process
            r = subprocess.run([sys.executable, __file__, "--one", f"{net}|{i}", "--device", a.device,
                                "--warmup", str(a.warmup), "--steps", str(a.steps), "--cpu-patch", str(a.cpu_patch),
                                "--out", a.out],
                               capture_output=True, text=True)
            if r.returncode:
                rows.append({"net": net, "setting": s["name"], "device": a.device, "error": r.stderr.strip().splitlines()[-1]})
            else:
                rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr, flush=True)
    print(f"{'net':10s} {'setting':34s} {'patch':>12s} {'batch':>5s} {'step s':>8s} {'of it sampling':>15s} {'peak MB':>9s}")
    for r in rows:
        if "error" in r:
            print(f"{r['net']:10s} {r['setting']:34s} failed: {r['error']}")
            continue
        print(f"{r['net']:10s} {r['setting']:34s} {'x'.join(map(str, r['patch'])):>12s} {r['batch']:5d} "
              f"{r['step_s']:8.3f} {r['sampling_s']:15.3f} {r['peak_mb']:9.0f}")
    if a.device == "cpu" and "mednext_s" in a.nets:
        print(f"(CPU: MedNeXt-S at {a.cpu_patch}^3, not 128^3; its 128^3 numbers come from --device cuda)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_step.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
