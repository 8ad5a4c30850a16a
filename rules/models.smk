# Models: the segmentation models and their batches, the label map the analyses use, the shape model.


SEG = config["segmentation"]
MODELS = list(SEG["models"]) if SEG["activate"] else []
# models this workflow trains (a `train` section); others are nnU-Net folders or ONNX files
TRAINED = [m for m in MODELS if "train" in SEG["models"][m]]
TRAIN_IDS = [
    s for s in IDS if ROWS[s]["split"] != "test" and ROWS[s]["labels"] is not None
]
_n_val = min(SEG["validation_cases"], max(len(TRAIN_IDS) - 1, 0))
VAL_IDS = TRAIN_IDS[len(TRAIN_IDS) - _n_val :]
FIT_IDS = TRAIN_IDS[: len(TRAIN_IDS) - _n_val]
SEGMENT_IDS = [
    s
    for s in IDS
    if ROWS[s]["image"] is not None
    and (ROWS[s]["split"] == "test" or ROWS[s]["labels"] is None)
]
DICE_IDS = [s for s in SEGMENT_IDS if ROWS[s]["reference_labels"] is not None]
# segmented knees that also have provided labels: thickness from both (tables/thickness_auto.csv)
AUTO_IDS = [s for s in DICE_IDS if ROWS[s]["labels"] is not None]


def model_cfg(name):
    return SEG["models"][name]


def segment_backend(name):
    """train (our checkpoint) | nnunet (an nnU-Net v2 model folder) | onnx (an exported model) |
    dosma (DOSMA's Keras .h5 models, in their own environment)."""
    m = model_cfg(name)
    for kind in ("train", "nnunet", "onnx", "dosma"):
        if kind in m:
            return kind
    raise WorkflowError(
        f"segmentation model {name!r} needs a `train`, `nnunet`, `onnx` or `dosma` section"
    )


def segment_model_input(name):
    """The file(s) a segmentation job needs for its model (Hub models are fetched by the job)."""
    kind, m = segment_backend(name), model_cfg(name)
    if kind == "train":
        return [f"results/models/{name}/checkpoint.pt"]
    if kind == "onnx":
        return [m["onnx"]["file"]]
    if kind == "dosma":
        d = m["dosma"]
        return [x["file"] for x in (d if isinstance(d, list) else [d])]
    folder = m["nnunet"].get("folder")
    return [os.path.join(folder, "plans.json")] if folder else []


def segment_batches():
    """(model, batch index, sample ids): one job loads a model once and segments a batch."""
    n = max(1, int(SEG["batch_size"]))
    for m in MODELS:
        for b in range(0, len(SEGMENT_IDS), n):
            yield m, b // n, SEGMENT_IDS[b : b + n]


# sample -> its batch index (the same for every model)
SEGMENT_BATCH = {s: b for m, b, ids in segment_batches() for s in ids}


def segment_staging(model, batch):
    """Where a batch job leaves its label maps (one per scan it could read) and manifest.json."""
    return f"results/models/{model}/segmented/batch{batch}"


def labels_path(wc):
    """The label map analyses use: the sheet's own (imported) if given, else the first model's."""
    if has_labels(wc.sample) or not MODELS:
        return f"results/{wc.sample}/labels/provided.nii.gz"
    return f"results/{wc.sample}/labels/{MODELS[0]}.nii.gz"


def has_any_labels(s):
    return has_labels(s) or (bool(MODELS) and s in SEGMENT_IDS)


# the samples the analyses run on (given or segmented labels), listed once for the cohort rules
WITH_LABELS = [s for s in IDS if has_any_labels(s)]


# The analyses' label map (LABELS), with femoral subregions (11-15) when configured (REGIONS): a
# plain pattern where it is the same for every sample, since Snakemake's call of an input function
# costs about 0.1 ms a job (a graph of 10k scans: 1 s each).
if not MODELS or all(has_labels(s) for s in IDS):
    LABELS = "results/{sample}/labels/provided.nii.gz"
elif not any(has_labels(s) for s in IDS):
    LABELS = f"results/{{sample}}/labels/{MODELS[0]}.nii.gz"
else:
    LABELS = fixed_signature(labels_path)
REGIONS = (
    "results/{sample}/labels/subregions.nii.gz"
    if config["thickness"]["femoral_subregions"]
    else LABELS
)


SHAPE = config["shape"]
NSM = SHAPE["name"]
NSM_PRETRAINED = SHAPE["pretrained"].get("folder", "")
# knees with label maps (so with meshes): all are fitted; training uses the train split only
NSM_FIT_IDS = WITH_LABELS if SHAPE["activate"] else []
NSM_TRAIN_IDS = (
    [s for s in NSM_FIT_IDS if ROWS[s]["split"] != "test"] if not NSM_PRETRAINED else []
)
# the BScore model is fitted on the train split's healthy and OA knees; test knees are only scored
BSCORE_FIT_IDS = [
    s
    for s in NSM_FIT_IDS
    if ROWS[s]["split"] != "test" and ROWS[s]["group"] in ("healthy", "oa")
]


# end to end: the knees segmented by the models (thickness.from_models) are fitted again from those labels
AUTO_NSM_IDS = (
    [s for s in AUTO_IDS if s in NSM_FIT_IDS]
    if MODELS and config["thickness"]["activate"] and config["thickness"]["from_models"]
    else []
)


def nsm_checkpoint():
    """The given model's checkpoint (ours: model.pth; public: model/<highest epoch>.pth), else the trained one."""
    if NSM_PRETRAINED:
        from kneeflow.shape import find_checkpoint, find_config

        cfg = json.loads(find_config(Path(NSM_PRETRAINED)).read_text())
        return str(
            find_checkpoint(
                Path(NSM_PRETRAINED), cfg, SHAPE["pretrained"].get("checkpoint")
            )
        )
    return f"results/models/{NSM}/model.pth"


def nsm_surfaces():
    """The surfaces the shape model fits (femur first): one reconstruction mesh each."""
    if NSM_PRETRAINED:
        from kneeflow.shape import find_config, public_surfaces

        p = SHAPE["pretrained"]
        cfg = json.loads(find_config(Path(NSM_PRETRAINED)).read_text())
        names = p.get("surfaces") or cfg.get("surfaces")
        return list(names or public_surfaces(cfg))
    return list(SHAPE["train"]["surfaces"])


def bscore_model_path():
    """A given BScore model.json (e.g. the public one), else the one fitted on this cohort."""
    return SHAPE["bscore_model"] or f"results/models/{NSM}/bscore/model.json"


def nsm_batches():
    """(batch index, sample ids): one job loads the shape model once and fits a batch of knees."""
    n = max(1, int(SHAPE["batch_size"]))
    for b in range(0, len(NSM_FIT_IDS), n):
        yield b // n, NSM_FIT_IDS[b : b + n]
