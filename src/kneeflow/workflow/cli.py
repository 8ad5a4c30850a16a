"""The ``kneeflow`` command: one subcommand per stage of the workflow.

The workflow's per-sample rules run these commands from ``shell:``, so ``snakemake -p`` prints a
command anyone can run again by hand. Every command names what it reads and writes with options in
the units and names of the config (``--bone-smooth-var-mm2`` is ``mesh.bone_smooth_var_mm2``),
writes each output atomically with a provenance sidecar ``<output>.prov.json``, and on failure prints
one line ``ERROR <command> sample=<id>: <file>: <problem>`` (also to ``--log``) and exits 1.
"""

from __future__ import annotations

__all__ = ["main"]

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path


def _mapping(text: str) -> dict:
    """``femur=20000,tibia=20000`` or JSON -> dict (numbers as numbers)."""
    text = text.strip()
    if text.startswith("{"):
        return json.loads(text)
    out = {}
    for item in filter(None, text.split(",")):
        k, _, v = item.partition("=")
        out[k.strip()] = json.loads(v) if v.strip().lstrip("-").replace(".", "", 1).isdigit() else v.strip()
    return out


# ---------------------------------------------------------------------------------------------- stages


def phantom(a) -> dict:
    """A synthetic knee: image, labels, MESE echoes, echo times and truth.json in --out."""
    from kneeflow import phantom as ph

    knee = ph.synthesize(a.seed, a.side, a.oa_severity, spacing=a.spacing_mm, mese=True,
                         lesions=ph.parse_lesions(a.lesions))
    ph.write(knee, Path(a.out))
    return {}


def ingest(a) -> dict:
    """A scan (DICOM folder, NIfTI or NRRD) -> checked --image (.nii.gz) and --qc record (.json)."""
    from kneeflow.qc import ingest as ingest_scan

    rec = ingest_scan(a.scan, a.image, a.qc)
    for w in rec["warnings"]:
        logging.getLogger("ingest").warning("%s: %s", a.scan, w)
    return {}


def ingest_echoes(a) -> dict:
    """A multi-echo series -> --echoes (.nii.gz, one component per echo) and --times (.json)."""
    from kneeflow import io

    img, tes = io.read_echoes(a.series)
    io.write_image(img, a.echoes)
    io.write_json({"echo_times_ms": tes, "source": str(a.series)}, a.times)
    logging.getLogger("ingest_echoes").info("echo times (ms): %s", tes)
    return {}


def labels(a) -> dict:
    """An existing label map -> --out in canonical labels (checked against --image when given)."""
    from kneeflow import io
    from kneeflow.labels import get_convention

    ref = io.read_volume(a.image) if a.image else None
    conv = get_convention(a.convention, _mapping(a.conventions) if a.conventions else {})
    io.write_image(io.load_label_map(a.labels, conv, reference=ref), a.out)
    return {}


def thickness(a) -> dict:
    """Label map -> bone/cartilage meshes (--meshes folder, LPS mm), the tidy thickness --table and,
    when asked, the standard morphometrics (--morphometrics table, --subregions-std label map,
    --thickness-map image on the label map's grid). Measured in the knee's canonical frame (a left knee
    as its mirror image; the side from the anatomy, --side where it cannot tell)."""
    from kneeflow import io, mesh
    from kneeflow.atomic import write_table
    from kneeflow.morphometrics import morphometrics

    extra = [a.morphometrics, a.subregions_std, a.thickness_map]
    if any(extra) and not all(extra):
        raise SystemExit("kneeflow thickness: --morphometrics, --subregions-std and --thickness-map go together")
    lab = io.read_volume(a.labels, what="label map")
    meshes, table, morpho, std, tmap = morphometrics(
        lab, a.sample, min_denuded_mm2=a.min_denuded_mm2, side=a.side or None, plates=bool(a.morphometrics),
        articular_smooth_var_mm2=a.articular_smooth_var_mm2, articular_min_facing=a.articular_min_facing,
        n_points=_mapping(a.n_points), bone_smooth_var_mm2=a.bone_smooth_var_mm2,
        cartilage_smooth_var_mm2=a.cartilage_smooth_var_mm2, ray_in=a.ray_in_mm, ray_out=a.ray_out_mm,
        crop_percent=1.0 if a.crop_shafts else None, source=str(a.labels),
    )
    out = Path(a.meshes)
    out.mkdir(parents=True, exist_ok=True)
    for name, poly in meshes.items():
        mesh.write_vtk(poly, out / f"{name}.vtk")
    write_table(table, a.table)
    if a.morphometrics:
        io.write_image(std, a.subregions_std)
        io.write_image(tmap, a.thickness_map)
        write_table(morpho, a.morphometrics)
    return {}


def subregions(a) -> dict:
    """Label map -> --out with femoral cartilage split into the five subregions (labels 11-15)."""
    from kneeflow import io
    from kneeflow.subregions import femoral_subregions

    lab = io.read_volume(a.labels, what="label map")
    io.write_image(femoral_subregions(lab, a.reference or None, shrink=a.reference_shrink, side=a.side), a.out)
    return {}


def t2(a) -> dict:
    """Echoes + echo times + labels -> --t2map (ms, cartilage only) and the regional --table."""
    import SimpleITK as sitk

    from kneeflow import io
    from kneeflow.atomic import write_table
    from kneeflow.t2 import sample_t2

    tes = json.loads(Path(a.times).read_text())["echo_times_ms"]
    lab = io.read_volume(a.labels, what="label map")
    t2map, table, info = sample_t2(sitk.ReadImage(a.echoes), tes, lab, a.sample, method=a.method,
                                   drop_first_echo=a.drop_first_echo, noise_floor_snr=a.noise_floor_snr,
                                   min_ms=a.min_ms, max_ms=a.max_ms)
    io.write_image(t2map, a.t2map)
    write_table(table, a.table)
    logging.getLogger("t2").info("%s", json.dumps(info))
    return {}


def segment_collect(a) -> dict:
    """One scan's label map from its batch's --staging folder, checked against --image -> --nii, --nrrd."""
    from kneeflow import io

    staging = Path(a.staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    entry = manifest["samples"].get(a.sample)
    if entry is None:
        raise RuntimeError(f"{staging}/manifest.json has no entry for {a.sample} (stale batch? rerun it)")
    if "error" in entry:
        raise io.InputError(entry["scan"], entry["error"].removeprefix(f"{entry['scan']}: "))
    image = io.read_volume(a.image)
    lab = io.read_volume(staging / entry["labels"], what="label map")
    diff = io.same_geometry(image, lab)
    if diff:
        raise io.InputError(staging / entry["labels"], f"label map does not match the ingested image {a.image}: {diff}")
    lab.CopyInformation(image)  # the ingested image's header exactly (NIfTI stores the affine in float32)
    io.write_image(lab, a.nii)
    io.write_image(lab, a.nrrd)
    batch = json.loads(staging.with_name(staging.name + ".prov.json").read_text())
    return {"weights": manifest["weights_sha256"],
            "extra": {"segmented_by": {k: batch.get(k) for k in ("rule", "device", "resources", "weights_sha256")}}}


def nsm_fit(a) -> dict:
    """Fit a shape model (ours or a public folder) to one knee's meshes -> --out (nsm.json) + reconstructions."""
    from kneeflow import shape
    from kneeflow.io import write_json
    from kneeflow.mesh import write_vtk
    from kneeflow.nsm_fit import fit_knees
    from kneeflow.surface import load_surface, make_poly

    model = shape.load_model(a.model)
    knee = {k: load_surface(Path(a.meshes) / f"{k}.vtk", closed=not model.public) for k in model.surfaces}
    rec, recon = fit_knees(model, {a.sample: knee}, {a.sample: a.side}, fit={"seed": a.seed},
                           resolution=a.resolution)[a.sample]
    out = Path(a.out)
    for j, k in enumerate(model.surfaces):
        write_vtk(make_poly(*recon[k]), out.with_name(f"nsm_recon{'' if j == 0 else '_' + k}.vtk"))
    write_json(rec, out)
    return {}


def nsm_train(a) -> dict:
    """Train our shape model on knees' meshes -> --out folder (one latent per training knee)."""
    from kneeflow import shape
    from kneeflow.surface import load_surface
    from kneeflow.workflow.schema import defaults

    cfg = {**defaults()["shape"]["train"], **json.loads(a.settings)}
    if len(a.sides) != len(a.meshes):
        raise ValueError(f"{len(a.meshes)} meshes folders but {len(a.sides)} sides")
    ids = [Path(m).parent.name or f"knee{i}" for i, m in enumerate(a.meshes)]
    knees = {s: {k: load_surface(Path(m) / f"{k}.vtk") for k in cfg["surfaces"]} for s, m in zip(ids, a.meshes)}
    shape.save_model(shape.train(knees, dict(zip(ids, a.sides)), cfg, device=a.device), a.out)
    return {}


def train_cmd(a) -> dict:
    """Train a registry segmentation network on images + label maps -> --out (checkpoint.pt,
    checkpoint_best.pt, metrics.csv, config.yaml). With --processes N > 1 it starts N ranks
    (data-parallel, kneeflow.distributed): `srun` inside a SLURM job, `torchrun` elsewhere."""
    import yaml

    from kneeflow.distributed import world_from_env
    from kneeflow.models import resolve_device
    from kneeflow.training import TrainConfig, train

    # inline JSON / YAML (a mapping) or the path of a file holding it
    text = a.settings if a.settings.lstrip().startswith("{") else Path(a.settings).read_text()
    cfg = TrainConfig(**yaml.safe_load(text))
    if len(a.images) != len(a.labels):
        raise ValueError(f"{len(a.images)} images but {len(a.labels)} label maps")
    if a.preview:
        from kneeflow.training import preview

        logging.getLogger("train").info("wrote %s", preview(list(zip(a.images, a.labels)), cfg, a.preview))
        return {"no_record": True}
    world = world_from_env()
    if a.processes > 1 and world.size == 1:
        _launch(a.processes, a.argv)
        return {}
    if world.size > 1 and world.size != a.processes:
        raise RuntimeError(f"started as {world.size} processes by {world.launcher}, --processes says {a.processes}")
    train(list(zip(a.images, a.labels)), list(zip(a.val_images, a.val_labels, a.val_sides)), Path(a.out), cfg,
          device=resolve_device(a.device))
    return {"no_record": not world.main}


def _launch(n: int, argv: list[str]) -> None:
    """Run this command as ``n`` ranks: ``srun`` within a SLURM allocation, else torchrun's launcher
    (in this process: its command line would parse our options, e.g. ``--log``, as its own)."""
    import shutil
    import subprocess

    log = logging.getLogger("train")
    if os.environ.get("SLURM_JOB_ID") and shutil.which("srun"):
        cmd = ["srun", f"--ntasks={n}", "--kill-on-bad-exit=1", sys.executable, "-m", "kneeflow", *argv]
        log.info("starting %d ranks: %s", n, " ".join(cmd))
        r = subprocess.run(cmd)
        if r.returncode:
            raise RuntimeError(f"the {n} training ranks failed (srun exit {r.returncode})")
        return
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={n}", "-m", "kneeflow"])
    args.training_script_args = list(argv)
    log.info("starting %d ranks: torchrun --standalone --nproc-per-node=%d -m kneeflow %s", n, n, " ".join(argv))
    run(args)  # raises ChildFailedError naming the failed rank


def export_cmd(a) -> dict:
    """A kneeflow checkpoint -> ONNX and CoreML (fp32, fp16) with measured parity (parity.json) in --out."""
    from kneeflow import export, models

    net, meta = models.load_model(a.checkpoint)
    size = tuple(int(s) for s in meta.get("patch_size", (32, 32, 32)))
    rec = export.export_segmentation(net, meta, Path(a.out), a.name, size=size)
    export.require_parity(rec, "onnx", a.onnx_atol, a.onnx_rtol)
    return {"weights": {str(a.checkpoint): models.file_sha256(a.checkpoint)}}


def bscore_cmd(a) -> dict:
    """BScore of fitted knees (nsm.json files) with a BScore model (model.json or its folder) -> --out."""
    from kneeflow import bscore
    from kneeflow.io import write_json

    model = bscore.load_bscore_model(a.model)
    out = {}
    for f in a.fits:
        fit = json.loads(Path(f).read_text())
        bscore.check_pair(model, len(fit["latent"]), str(a.model), f"the shape model of {f}")
        out[fit.get("sample", f)] = bscore.bscore(model, fit["latent"])
    write_json(out, a.out) if a.out else print(json.dumps(out, indent=1))
    return {}


def run_knee(a) -> dict:
    """One knee end to end through the workflow: a one-row sheet, then Snakemake on it (results in --out)."""
    import shutil
    import subprocess

    import yaml

    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    image = Path(a.image).resolve()
    sample = a.sample or image.name.split(".")[0].replace(" ", "_")
    row = {"sample": sample, "side": a.side, "image": str(image), "split": "test"}
    if a.labels:
        row.update({"labels": str(Path(a.labels).resolve()), "label_convention": a.label_convention})
    (out / "samples.tsv").write_text("\t".join(row) + "\n" + "\t".join(row.values()) + "\n")
    # the sheet may point only into the folders of the files given here
    roots = {str(image.parent)} | ({str(Path(a.labels).resolve().parent)} if a.labels else set())
    cfg = {"samples": str(out / "samples.tsv"), "allowed_roots": sorted(roots)}
    if a.model:
        cfg["segmentation"] = {"activate": True, "models": {"model": _model_entry(a.model)}}
    if a.nsm:
        cfg["shape"] = {"activate": True, "pretrained": {"folder": str(Path(a.nsm).resolve())}}
        if a.bscore:
            cfg["shape"]["bscore_model"] = str(Path(a.bscore).resolve())
    (out / "run.yaml").write_text(yaml.safe_dump(cfg))
    root = Path(__file__).resolve().parents[3]
    snakemake = shutil.which("snakemake") or str(Path(sys.executable).with_name("snakemake"))
    cmd = [snakemake, "-s", str(root / "Snakefile"), "-d", str(out), "--configfile", str(root / "config" / "config.yaml"),
           str(out / "run.yaml"), "--cores", str(a.cores)]
    print(" ".join(cmd), flush=True)
    rc = subprocess.run(cmd, cwd=out).returncode
    if rc:
        raise RuntimeError(f"the workflow failed (exit {rc}); see {out}/results/logs")
    return {}


def _model_entry(path: str) -> dict:
    p = Path(path).resolve()
    if p.suffix == ".onnx":
        return {"onnx": {"file": str(p)}}
    if p.is_dir():
        return {"nnunet": {"folder": str(p)}}
    raise ValueError(f"{p}: --model must be an exported .onnx or an nnU-Net results folder")


# ---------------------------------------------------------------------------------------------- parser

GROUP_HELP = {"segment": "Segmentation: collect one scan's labels from its batch (the batch itself runs in the workflow).",
              "nsm": "Neural shape models: fit a knee (ours or a public model), train ours."}


def _parser() -> argparse.ArgumentParser:
    from kneeflow.workflow.schema import defaults

    d = defaults()  # the config schema's defaults: one source for the workflow and the commands
    ap = argparse.ArgumentParser(prog="kneeflow", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", metavar="STAGE", required=True)

    groups = {}

    def stage(name, fn, inputs=(), outputs=(), *, sample=True):
        """A subcommand (``group action`` for two words); ``inputs``/``outputs`` name its file options
        (for the provenance sidecars)."""
        parent = sub
        if " " in name:
            group, name = name.split(" ")
            if group not in groups:
                g = sub.add_parser(group, help=GROUP_HELP[group], description=GROUP_HELP[group])
                groups[group] = g.add_subparsers(dest="action", metavar="ACTION", required=True)
            parent = groups[group]
        p = parent.add_parser(name, help=fn.__doc__.splitlines()[0], description=fn.__doc__,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.set_defaults(fn=fn, files_in=inputs, files_out=outputs)
        if sample:
            p.add_argument("--sample", default="", help="the sample id (in tables and error lines)")
        p.add_argument("--code", default="", help="the code hash the workflow planned this job with (provenance)")
        p.add_argument("--mem-mb", type=int, help="memory the job was given (provenance; the workflow passes it)")
        p.add_argument("--runtime", type=int, help="minutes the job was given (provenance; the workflow passes it)")
        p.add_argument("--log", help="write the log here too (the workflow's per-job log)")
        return p

    p = stage("phantom", phantom, outputs=("out",))
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--side", choices=["left", "right"], required=True)
    p.add_argument("--oa-severity", type=float, default=0.0)
    p.add_argument("--spacing-mm", type=float, default=d["demo"]["spacing_mm"])
    p.add_argument("--lesions", default="", help="full-thickness lesions as plate=mm2,... (MT, LT, cMF, cLF)")
    p.add_argument("--out", required=True, help="folder for image/labels/echoes .nii.gz, echoes.json, truth.json")

    p = stage("ingest", ingest, ("scan",), ("image", "qc"))
    p.add_argument("--scan", required=True, help="DICOM folder, NIfTI or NRRD")
    p.add_argument("--image", required=True, help="checked image (.nii.gz) to write")
    p.add_argument("--qc", required=True, help="QC record (.json) to write")

    p = stage("ingest-echoes", ingest_echoes, ("series",), ("echoes", "times"))
    p.add_argument("--series", required=True, help="DICOM folder or 4-D NIfTI with its .json of echo_times_ms")
    p.add_argument("--echoes", required=True)
    p.add_argument("--times", required=True)

    p = stage("labels", labels, ("labels", "image"), ("out",))
    p.add_argument("--labels", required=True, help="the label map to import")
    p.add_argument("--convention", default="canonical", help="canonical, pymskt or one from --conventions")
    p.add_argument("--conventions", default="", help="config label_conventions as JSON")
    # may be given empty (a sheet row without an image): `--image ""` or `--image` alone
    p.add_argument("--image", nargs="?", const="", default="", help="the ingested image its grid must match")
    p.add_argument("--out", required=True)

    p = stage("thickness", thickness, ("labels",), ("meshes", "table", "morphometrics", "subregions_std",
                                                    "thickness_map"))
    p.add_argument("--labels", required=True, help="label map (canonical labels, subregions 11-15 allowed)")
    p.add_argument("--meshes", required=True, help="folder for the meshes (.vtk)")
    p.add_argument("--table", required=True, help="thickness table (.csv)")
    p.add_argument("--n-points", default=",".join(f"{k}={v}" for k, v in d["mesh"]["n_points"].items()),
                   help="mesh.n_points as bone=points,...")
    p.add_argument("--bone-smooth-var-mm2", type=float, default=d["mesh"]["bone_smooth_var_mm2"])
    p.add_argument("--cartilage-smooth-var-mm2", type=float, default=d["mesh"]["cartilage_smooth_var_mm2"])
    p.add_argument("--crop-shafts", action=argparse.BooleanOptionalAction, default=d["mesh"]["crop_shafts"])
    p.add_argument("--ray-in-mm", type=float, default=d["thickness"]["ray_in_mm"])
    p.add_argument("--ray-out-mm", type=float, default=d["thickness"]["ray_out_mm"])
    p.add_argument("--morphometrics", default="", help="morphometrics table (.csv): VC, tAB, cAB, dAB%%, AC, ThC")
    p.add_argument("--subregions-std", default="", help="label map (.nii.gz) of the standard subregions")
    p.add_argument("--thickness-map", default="", help="image (.nii.gz): local thickness (mm) in cartilage voxels")
    p.add_argument("--side", choices=["left", "right"], default=None,
                   help="the knee's side where the label map cannot tell (no tibial plates or menisci)")
    p.add_argument("--min-denuded-mm2", type=float, default=d["thickness"]["min_denuded_mm2"],
                   help="enclosed cartilage-free patches smaller than this are dropouts, not denuded bone")
    p.add_argument("--articular-smooth-var-mm2", type=float, default=d["thickness"]["articular_smooth_var_mm2"],
                   help="smoothing (mm^2) of the plates the morphometrics' thickness rays are cast on")
    p.add_argument("--articular-min-facing", type=float, default=d["thickness"]["articular_min_facing"],
                   help="keep a morphometrics thickness ray where it meets the surface within acos(this) of head on")

    p = stage("subregions", subregions, ("labels", "reference"), ("out",))
    p.add_argument("--labels", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--reference", default=d["thickness"]["subregion_reference"],
                   help="thickness.subregion_reference (pymskt's reference knee)")
    p.add_argument("--reference-shrink", type=int, default=d["thickness"]["subregion_reference_shrink"])
    p.add_argument("--side", choices=["left", "right"], default="right",
                   help="the knee's side (a left knee is registered to the right reference as its mirror image)")

    p = stage("t2", t2, ("echoes", "times", "labels"), ("t2map", "table"))
    p.add_argument("--echoes", required=True)
    p.add_argument("--times", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--t2map", required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--method", choices=["loglinear", "nonlinear"], default=d["t2"]["method"])
    p.add_argument("--drop-first-echo", action=argparse.BooleanOptionalAction, default=d["t2"]["drop_first_echo"])
    p.add_argument("--noise-floor-snr", type=float, default=d["t2"]["noise_floor_snr"])
    p.add_argument("--min-ms", type=float, default=d["t2"]["min_ms"])
    p.add_argument("--max-ms", type=float, default=d["t2"]["max_ms"])

    p = stage("segment collect", segment_collect, ("image",), ("nii", "nrrd"))
    p.add_argument("--staging", required=True, help="the batch job's staging folder")
    p.add_argument("--image", required=True, help="the ingested image")
    p.add_argument("--nii", required=True)
    p.add_argument("--nrrd", required=True)

    p = stage("nsm fit", nsm_fit, ("model", "meshes"), ("out",))
    p.add_argument("--model", required=True, help="shape model folder (ours or the public layout)")
    p.add_argument("--meshes", required=True, help="the knee's meshes folder")
    p.add_argument("--side", choices=["left", "right"], required=True)
    p.add_argument("--seed", type=int, default=d["shape"]["fit"]["seed"])
    p.add_argument("--resolution", type=int, default=d["shape"]["fit"]["resolution"])
    p.add_argument("--out", required=True, help="nsm.json; reconstructions are written beside it")

    p = stage("nsm train", nsm_train, ("meshes",), ("out",), sample=False)
    p.add_argument("--meshes", nargs="+", required=True, help="the training knees' meshes folders")
    p.add_argument("--sides", nargs="+", required=True, choices=["left", "right"], help="one per meshes folder")
    p.add_argument("--settings", default="{}", help="shape.train settings as JSON (defaults: the config's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="model folder (model.pth, model_params_config.json, latents.json)")

    p = stage("train", train_cmd, ("images", "labels"), ("out",), sample=False)
    p.add_argument("--settings", required=True, help="a model's `train` section (JSON or a .yaml/.json file)")
    p.add_argument("--images", nargs="+", required=True)
    p.add_argument("--labels", nargs="+", required=True, help="canonical label maps, one per image")
    p.add_argument("--val-images", nargs="*", default=[])
    p.add_argument("--val-labels", nargs="*", default=[])
    p.add_argument("--val-sides", nargs="*", default=[])
    p.add_argument("--device", default="cpu")
    p.add_argument("--processes", type=int, default=1,
                   help="ranks (resources.gpus_per_node x resources.nodes); the batch size is the global batch")
    p.add_argument("--out", required=True, help="model folder (checkpoint.pt, metrics.csv)")
    p.add_argument("--preview", default="", help="only write 8 augmented training patches (NIfTI + preview.png) "
                                                 "to this folder, and do not train")

    p = stage("export", export_cmd, ("checkpoint",), ("out",), sample=False)
    p.add_argument("--checkpoint", required=True, help="a checkpoint.pt trained by kneeflow")
    p.add_argument("--name", required=True)
    p.add_argument("--onnx-atol", type=float, default=d["export"]["onnx_atol"])
    p.add_argument("--onnx-rtol", type=float, default=d["export"]["onnx_rtol"],
                   help="parity bound: onnx_atol + onnx_rtol x the largest |PyTorch output|")
    p.add_argument("--out", required=True, help="folder for <name>.onnx, the .mlpackages and parity.json")

    p = stage("bscore", bscore_cmd, ("model", "fits"), ("out",), sample=False)
    p.add_argument("--model", required=True, help="BScore model.json or a BSCORE_MODELS/<name>/ folder")
    p.add_argument("fits", nargs="+", help="nsm.json files")
    p.add_argument("--out", default="")

    p = stage("run", run_knee)
    p.add_argument("image", help="one knee's scan (DICOM folder, NIfTI or NRRD)")
    p.add_argument("--out", required=True, help="working folder (results/ inside)")
    p.add_argument("--side", choices=["left", "right"], required=True)
    p.add_argument("--model", default="", help="segmentation model: exported .onnx or nnU-Net folder")
    p.add_argument("--labels", default="", help="an existing label map instead of a model")
    p.add_argument("--label-convention", default="canonical")
    p.add_argument("--nsm", default="", help="shape model folder (fits the femur)")
    p.add_argument("--bscore", default="", help="BScore model for the shape model")
    p.add_argument("--cores", type=int, default=2)
    return ap


def main(argv: list[str] | None = None) -> None:
    a = _parser().parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)  # to start the same command as several ranks
    name = a.command + (f" {a.action}" if getattr(a, "action", None) else "")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if a.log:
        Path(a.log).parent.mkdir(parents=True, exist_ok=True)
        from kneeflow.distributed import world_from_env

        # the ranks of a data-parallel command append to the log the launching process started
        handlers.append(logging.FileHandler(a.log, mode="a" if world_from_env().size > 1 else "w"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)
    for noisy in ("numexpr", "pyacvd", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    sample = getattr(a, "sample", "")
    try:
        ret = a.fn(a) or {}
        if name != "run" and not ret.get("no_record"):
            from kneeflow.workflow import provenance

            def files(names):
                vals = [getattr(a, k) for k in names]
                return [str(f) for v in vals for f in (v if isinstance(v, list) else [v]) if f]

            outputs = files(a.files_out)
            if name == "train":  # the model folder's files
                outputs = [str(Path(a.out) / f) for f in ("checkpoint.pt", "metrics.csv", "config.yaml")]
            if name == "phantom":
                outputs = [str(Path(a.out) / f) for f in ("image.nii.gz", "labels.nii.gz", "echoes.nii.gz",
                                                          "echoes.json", "truth.json")]
            skip = ("fn", "command", "log", "files_in", "files_out", "mem_mb", "runtime", "argv")
            opts = {k: v for k, v in vars(a).items() if k not in skip}
            rec = provenance.record(name, {"sample": sample} if sample else {}, files(a.files_in), opts,
                                    ret.get("weights"))
            rec.update(ret.get("extra", {}))
            # what the job was given (memory and runtime grow with the attempt under --retries)
            rec["resources"] = {k: getattr(a, k) for k in ("mem_mb", "runtime") if getattr(a, k) is not None}
            provenance.write_sidecars(rec, outputs)
    except Exception as e:  # noqa: BLE001 - reported in one line, then the command fails
        from kneeflow.workflow.rule import one_line

        line = f"ERROR {name}{f' sample={sample}' if sample else ''}: {one_line(e)}"
        if a.log:
            with open(a.log, "a") as fh:
                fh.write(line + "\n" + traceback.format_exc())
        print(line, file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
