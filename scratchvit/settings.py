"""The training settings, defined once: :class:`TrainSettings` (a frozen dataclass).

Each field carries its default, its help text, its choices and its command-line group; the
``python -m scratchvit.train`` parser is generated from it (:func:`build_parser`, whose help shows the
defaults from the dataclass), and presets (``scratchvit/presets/*.json``) and a run's ``config.json``
load through :meth:`TrainSettings.from_dict`, which refuses unknown keys by name, as ``config.lock()``
does in the official vit_jax. Resolution order: defaults <- preset (--config; without it
:data:`DEFAULT_PRESET`, the Quickstart) <- command-line flags; with --resume, the run's own config.json,
where only the settings in :data:`RUNTIME` may change. The dataclass defaults are the base under every
preset: the paper's fine-tuning recipe (SGD, batch 512, warmup + cosine; ViT-B/16 on CIFAR-10), which
``TrainSettings()`` in Python is; the command line always starts from a preset.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from pathlib import Path

from .backend import DEVICES, DTYPES, PRECISIONS
from .checks import check_positive_int
from .configs import CLASSIFIERS, MODELS
from .data import AUGMENTS, DATASETS
from .ops.gelu import GELU_FORMS
from .optim import DECAY_ON, OPTIMIZERS, SCHEDULES

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
# The command-line groups of ``--help``, by name (a field's ``group``), in the order they are shown.
HARDWARE, DATA, MODEL, OPTIM, OUTPUT, MPI = GROUPS = (
    "hardware and numbers", "data", "model", "optimisation", "evaluation and output", "distributed (MPI)")
# What ``python -m scratchvit.train`` runs when no --config is given: the Quickstart.
DEFAULT_PRESET = "fashion-mnist"
TTA_FORMS = ("flip",)  # test-time augmentations of evaluate.evaluate
OBJECTIVES = ("classify", "masked-patch")  # what a run trains: the labels, or masked patch prediction (Sec. 4.6)
MIN_CALIBRATION_STEPS = 10  # --time-limit: the fewest warmup steps that the step time is measured over
# What may differ when a run is resumed: where it runs and how it reports, never what it computes.
RUNTIME = ("device", "progress", "workers", "data_dir", "distributed", "mpi_timeout")


def setting(default, group: str, help: str, choices=None, required: bool = False,  # noqa: A002  (argparse's name)
            metavar: str | None = None, positional: str | None = None):
    """A dataclass field holding its command-line group (one of GROUPS, by name), help text and choices;
    ``required``: a flag that must be given; ``positional``: plain arguments (a list), "+" one or more,
    "*" any number.

    Raises:
        ValueError: a group not in GROUPS, or ``positional`` other than None, "+", "*".
    """
    if group not in GROUPS:
        raise ValueError(f"setting: unknown group {group!r}; groups: {', '.join(GROUPS)}")
    if positional not in (None, "+", "*"):
        raise ValueError(f"setting: positional must be None, '+' or '*', got {positional!r}")
    return dataclasses.field(default=default, metadata=dict(group=group, help=help, choices=choices,
                                                            required=required, metavar=metavar,
                                                            positional=positional))


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Every setting of a training run (config.json's "settings"). Field names are the flags' names."""

    device: str = setting("cpu", HARDWARE, "cpu (NumPy) or gpu (CuPy)", DEVICES)
    dtype: str = setting("float32", HARDWARE, "parameters and activations", DTYPES)
    precision: str = setting("fp32", HARDWARE, "fp32: everything in --dtype; fp16: mixed precision, float16 forward "
                             "and backward on float32 master parameters with dynamic loss scaling (needs --dtype "
                             "float32)", PRECISIONS)
    seed: int = setting(0, HARDWARE, "seeds the initialisation, the validation split, the data order and the "
                        "augmentation")
    dataset: str = setting("cifar10", DATA, "dataset", DATASETS)
    data_dir: str = setting(None, DATA, "where the dataset files are; for imagefolder: ROOT with train/ and test/ "
                            "(None: a system copy, then the data/ cache, then download)")
    augment: str = setting("inception", DATA, "training augmentation: inception = random crop of crop-min-area to "
                           "100%% area + flip (the paper's fine-tuning); crop-flip = pad by 1/8 and random crop + "
                           "flip; pad-crop-flip = pad by --pad pixels and random crop + flip; flip; none", AUGMENTS)
    pad: int = setting(4, DATA, "pixels of zero padding before the random crop of --augment pad-crop-flip")
    random_erasing: float = setting(0.0, DATA, "probability that a training image gets a random-erasing rectangle "
                                    "(Zhong et al. 2020: 2-33%% of the area, aspect 0.3-3.3, random values)")
    mixup: float = setting(0.0, DATA, "mixup alpha (Zhang et al. 2018; lambda ~ Beta(alpha, alpha)); 0: off; with "
                           "--cutmix too, one of the two per batch with p = 0.5; soft targets")
    cutmix: float = setting(0.0, DATA, "CutMix alpha (Yun et al. 2019); 0: off")
    crop_min_area: float = setting(0.05, DATA, "smallest crop area for --augment inception")
    val_fraction: float = setting(0.02, DATA, "share of the training set held out for validation")
    workers: int = setting(2, DATA, "threads preparing batches in the background")
    skip_bad_images: bool = setting(False, DATA, "imagefolder: skip and count unreadable image files instead of "
                                    "stopping at the first one")
    model: str = setting("ViT-B_16", MODEL, f"geometry name; one of {', '.join(MODELS)}")
    image_size: int = setting(None, MODEL, "input side in pixels; images are resized to it (None: the model's, or the "
                              "checkpoint's)")
    patch_size: int = setting(None, MODEL, "patch side in pixels, in feature-map cells for a hybrid (None: the "
                              "model's)")
    resnet: str = setting(None, MODEL, "the hybrid's ResNet (paper Sec. 3.1): bottleneck units per stage, "
                          "comma-separated (3,4,9 as R50+ViT-B_16); root: the root alone (7x7/2 conv, group norm, "
                          "ReLU, 3x3/2 max pool); none: a plain ViT (None: the model's)")
    resnet_width: float = setting(None, MODEL, "the hybrid ResNet's width factor: int(64 x this) root channels, a "
                                  "multiple of 32 (None: the model's, or 1)")
    hidden_size: int = setting(None, MODEL, "token width D (None: the model's)")
    num_layers: int = setting(None, MODEL, "encoder blocks (None: the model's)")
    num_heads: int = setting(None, MODEL, "attention heads (None: the model's)")
    mlp_dim: int = setting(None, MODEL, "MLP hidden width (None: the model's)")
    classifier: str = setting(None, MODEL, "class token or global average pooling (None: the model's)", CLASSIFIERS)
    gelu: str = setting(None, MODEL, "GELU form (None: tanh, as the official model)", GELU_FORMS)
    dropout: float = setting(0.0, MODEL, "dropout rate after the position embeddings, on the attention output and "
                             "in the MLP (after the GELU and after the second dense layer), as vit_jax's dropout_rate")
    attention_dropout: float = setting(0.0, MODEL, "dropout rate of the attention probabilities "
                                       "(attention_dropout_rate)")
    drop_path: float = setting(0.0, MODEL, "stochastic depth: the largest per-sample drop rate of a residual branch, "
                               "rising linearly from 0 in the first block to this in the last (drop_path_rate)")
    checkpoint: str = setting(None, MODEL, "fine-tune from this official .npz (e.g. ViT-B_16.npz): the geometry comes "
                              "from the file, the head is replaced by a zero head, the position embeddings are "
                              "resized")
    objective: str = setting("classify", OPTIM, "classify: softmax cross-entropy on the labels; masked-patch: the "
                             "paper's self-supervision (Sec. 4.6), labels unused: corrupt --mask-ratio of each image's "
                             "patch embeddings and predict each corrupted patch's 3-bit mean colour (512 classes; 8 "
                             "for grey data); fine-tune from its checkpoint with --checkpoint", OBJECTIVES)
    mask_ratio: float = setting(0.5, OPTIM, "masked-patch: share of each image's patches corrupted")
    mask_fraction: float = setting(0.8, OPTIM, "masked-patch: share of the corrupted patches replaced by the learned "
                                   "[mask] embedding")
    random_fraction: float = setting(0.1, OPTIM, "masked-patch: share of the corrupted patches replaced by another "
                                     "patch of the image (the rest stay as they are)")
    optimizer: str = setting("sgd", OPTIM, "sgd (momentum) or adamw", tuple(OPTIMIZERS))
    lr: float = setting(0.03, OPTIM, "peak learning rate")
    lr_sweep: str = setting(None, OPTIM, "comma-separated learning rates, e.g. 0.001,0.003,0.01,0.03: a short run of "
                            "--sweep-steps for each, scored on the validation split, then the full run with the "
                            "best")
    sweep_steps: int = setting(200, OPTIM, "steps of each --lr-sweep run")
    momentum: float = setting(0.9, OPTIM, "SGD momentum")
    weight_decay: float = setting(0.0, OPTIM, "decoupled weight decay")
    weight_decay_on: str = setting("all", OPTIM, "what --weight-decay acts on: all parameters, or kernels only (the "
                                   "biases, layer-norm scales, position embeddings and class token undecayed, as "
                                   "timm and big_vision)", DECAY_ON)
    schedule: str = setting("cosine", OPTIM, "decay after warmup", SCHEDULES)
    steps: int = setting(10000, OPTIM, "optimiser steps")
    epochs: float = setting(None, OPTIM, "train for this many passes over the training split instead of --steps")
    time_limit: float = setting(None, OPTIM, "minutes for the whole run (loading, steps, evaluations, the test "
                                "pass) instead of --steps/--epochs: the first steps of the warmup measure the step "
                                "time, then the step count is set so that the warmup and the decay end at the "
                                "limit; the count goes into config.json (--resume keeps it; --steps N reruns it)")
    warmup_steps: int = setting(500, OPTIM, "linear warmup steps")
    batch_size: int = setting(512, OPTIM, "images per optimiser step (global: shared by all MPI ranks)")
    accum_steps: int = setting(1, OPTIM, "split each (rank's) batch into this many micro-batches whose gradients are "
                               "averaged: the same update with less memory")
    grad_clip: float = setting(1.0, OPTIM, "clip the global gradient norm at this value; 0 turns it off")
    label_smoothing: float = setting(0.0, OPTIM, "training targets put 1 - this on the label and this / classes on "
                                     "every class (validation and test losses stay plain cross-entropy)")
    eval_every: int = setting(100, OUTPUT, "steps between validation passes and checkpoints")
    eval_batch_size: int = setting(256, OUTPUT, "images per evaluation forward pass (per rank)")
    tta: str = setting(None, OUTPUT, "test-time augmentation of the final test pass: flip = logits averaged over "
                       "each image and its mirror (recorded beside the plain accuracy)", TTA_FORMS)
    out: str = setting("runs/latest", OUTPUT, "output folder")
    progress: bool = setting(True, OUTPUT, "progress bar (--no-progress: one line per evaluation instead)")
    distributed: str = setting("auto", MPI, "auto: data-parallel over the MPI ranks when started by mpiexec/mpirun "
                               "with more than one process; off: every process trains alone", ("auto", "off"))
    mpi_timeout: float = setting(300.0, MPI, "seconds a collective may wait for the other ranks before the run is "
                                 "aborted with an error naming the step (a rank died or hangs)")

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "TrainSettings":
        """Settings from a dict (a preset or config.json's "settings"); missing keys take the defaults.

        Raises:
            ValueError: unknown keys (named, with ``where``), or a setting that cannot work (see validate).
        """
        d = {k: v for k, v in d.items() if k not in ("_comment", "resume")}
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"{where}: unknown settings {unknown}")
        return cls(**d)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the setting (as its flag) that cannot work."""
        for k in ("batch_size", "accum_steps", "eval_every", "eval_batch_size", "sweep_steps", "workers"):
            check_positive_int(flag(k), getattr(self, k))
        if self.batch_size % self.accum_steps:
            raise ValueError(f"--batch-size {self.batch_size} is not divisible by --accum-steps {self.accum_steps}")
        if self.epochs is None:
            check_positive_int("--steps", self.steps)
        elif not self.epochs > 0:
            raise ValueError(f"--epochs must be positive, got {self.epochs}")
        if self.time_limit is not None:
            if not self.time_limit > 0:
                raise ValueError(f"--time-limit must be positive (minutes), got {self.time_limit}")
            if self.epochs is not None:
                raise ValueError(f"--time-limit {self.time_limit:g} and --epochs {self.epochs:g} both set the length "
                                 "of the run: give one of them")
            if self.warmup_steps < MIN_CALIBRATION_STEPS or self.schedule == "constant":
                raise ValueError(f"--time-limit measures the step time during the warmup (up to "
                                 f"{MIN_CALIBRATION_STEPS} steps of it): it needs --warmup-steps >= "
                                 f"{MIN_CALIBRATION_STEPS} and a decaying --schedule, got {self.warmup_steps} and "
                                 f"{self.schedule}")
        for k in ("lr", "mpi_timeout"):
            if not getattr(self, k) > 0:
                raise ValueError(f"{flag(k)} must be positive, got {getattr(self, k)}")
        check_positive_int("--seed", self.seed, 0)  # NumPy's generators take seeds >= 0
        if self.precision == "fp16" and self.dtype != "float32":
            raise ValueError(f"--precision fp16 keeps float32 master parameters: it needs --dtype float32, "
                             f"got {self.dtype}")
        if self.warmup_steps < 0 or self.grad_clip < 0:
            raise ValueError("--warmup-steps and --grad-clip must be >= 0")
        if self.epochs is None and self.time_limit is None:
            self.check_warmup(self.steps)
        if self.objective == "masked-patch":
            if self.checkpoint:
                raise ValueError("--objective masked-patch pre-trains a model from scratch; fine-tune from its "
                                 "checkpoint with --checkpoint and --objective classify")
            if not 0 < self.mask_ratio <= 1 or self.mask_fraction < 0 or self.random_fraction < 0 or \
                    self.mask_fraction + self.random_fraction > 1:
                raise ValueError(f"--mask-ratio must lie in (0, 1] and --mask-fraction + --random-fraction in [0, 1], "
                                 f"got {self.mask_ratio}, {self.mask_fraction}, {self.random_fraction}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"--label-smoothing must lie in [0, 1), got {self.label_smoothing}")
        for k in ("dropout", "attention_dropout", "drop_path"):
            if not 0 <= getattr(self, k) < 1:
                raise ValueError(f"{flag(k)} must lie in [0, 1), got {getattr(self, k)}")
        if not 0 <= self.random_erasing <= 1:
            raise ValueError(f"--random-erasing must lie in [0, 1], got {self.random_erasing}")
        if self.mixup < 0 or self.cutmix < 0:
            raise ValueError(f"--mixup and --cutmix must be >= 0, got {self.mixup} and {self.cutmix}")
        check_positive_int("--pad", self.pad, 0)
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"--val-fraction must lie in (0, 1), got {self.val_fraction}")
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; known models: {', '.join(MODELS)}")
        _check_choices(self)

    def check_warmup(self, total_steps: int) -> None:
        """The warmup check, the one place it is made: --warmup-steps must be below the run's total steps
        (--steps, or --epochs times the steps per epoch, known once the data is loaded) unless the
        schedule is constant.

        Raises:
            ValueError: naming both numbers and what to change.
        """
        if self.schedule != "constant" and self.warmup_steps >= total_steps:
            given = f"--steps {total_steps}" if self.epochs is None else \
                f"the {total_steps} steps of --epochs {self.epochs:g}"
            raise ValueError(f"--warmup-steps {self.warmup_steps} must be below {given} (the {self.schedule} "
                             "schedule decays after the warmup); give a smaller --warmup-steps")

    def to_dict(self) -> dict:
        """The settings as a JSON-ready dict (config.json's "settings")."""
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """SHA-256 of the settings that define what is computed (all but RUNTIME ones that may differ per rank)."""
        d = {k: v for k, v in self.to_dict().items() if k not in ("progress", "workers")}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    replace = dataclasses.replace


def shared(name: str, **changes):
    """A field of another CLI's settings that is the same as TrainSettings' ``name`` (its default, help text
    and choices; ``changes`` override some, e.g. ``help=``, ``default=``, ``required=``), so that a choice
    such as the devices or the GELU forms is written once."""
    f = next(f for f in dataclasses.fields(TrainSettings) if f.name == name)
    meta = {**f.metadata, **changes}
    return dataclasses.field(default=meta.pop("default", f.default), metadata=meta)


def _check_choices(settings) -> None:
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.metadata["choices"] and value is not None and value not in f.metadata["choices"]:
            raise ValueError(f"{flag(f.name)} must be one of {', '.join(f.metadata['choices'])}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class EvaluateSettings:
    """The settings of ``python -m scratchvit.evaluate``; the flags shared with training are TrainSettings'."""

    checkpoint: str = setting(None, MODEL, "an .npz in the official layout (e.g. a run's best.npz)", required=True)
    dataset: str = shared("dataset", default=None, required=True, help="dataset to evaluate on")
    data_dir: str = shared("data_dir")
    split: str = setting("test", DATA, "which split", ("test", "train"))
    batch_size: int = shared("eval_batch_size", help="images per forward pass")
    device: str = shared("device")
    dtype: str = shared("dtype")
    gelu: str = shared("gelu", help="GELU form the weights were trained with (tanh: official JAX; erf: "
                       "PyTorch/timm); None: the run's config.json next to the checkpoint, else tanh")
    workers: int = shared("workers", help="threads preparing images")
    skip_bad_images: bool = shared("skip_bad_images")
    tta: str = shared("tta", help="test-time augmentation: flip = logits averaged over each image and its mirror; "
                      "the report is of the averaged logits, the plain accuracy beside it")
    json: str = setting(None, OUTPUT, "also write the results to this JSON file")

    def __post_init__(self):
        check_positive_int("--batch-size", self.batch_size)
        check_positive_int("--workers", self.workers)
        _check_choices(self)


@dataclasses.dataclass(frozen=True)
class PredictSettings:
    """The settings of ``python -m scratchvit.predict``; --device is TrainSettings'."""

    images: list = setting(None, DATA, "image files (any format Pillow reads)", metavar="IMAGE", positional="+")
    checkpoint: str = setting(None, MODEL, "an .npz checkpoint (official layout)", required=True)
    top_k: int = setting(5, OUTPUT, "classes shown per image")
    labels: str = setting(None, OUTPUT, "class names, one per line (None: the run's config.json, ImageNet-1k names "
                          "for 1000 classes, else 'class K')")
    json: bool = setting(False, OUTPUT, "print one JSON document instead of text")
    device: str = shared("device")
    attention_map: str = setting(None, OUTPUT, "write the attention rollout of every image, overlaid on it, to this "
                                 "PNG", metavar="OUT.png")

    def __post_init__(self):
        if self.top_k < 1:
            raise ValueError(f"--top-k must be at least 1, got {self.top_k}")
        if self.attention_map is not None and not self.attention_map.lower().endswith(".png"):
            raise ValueError(f"--attention-map must name a .png file, got {self.attention_map!r}")
        _check_choices(self)


@dataclasses.dataclass(frozen=True)
class PlotSettings:
    """The settings of ``python -m scratchvit.plot``."""

    runs: list = setting(None, DATA, "run folders (with metrics.jsonl) or metrics.jsonl files", metavar="RUN",
                         positional="+")
    out: str = setting(None, OUTPUT, "the PNG to write (None: curves.png in the first run's folder)")

    def __post_init__(self):
        if self.out is not None and not self.out.lower().endswith(".png"):
            raise ValueError(f"--out must name a .png file, got {self.out!r}")


FILTERS = ("auto", "rgb", "grey")  # inspect --filters


@dataclasses.dataclass(frozen=True)
class InspectSettings:
    """The settings of ``python -m scratchvit.inspect``; the flags shared with training are TrainSettings'."""

    files: list = setting(None, DATA, "image files (any format Pillow reads), instead of --dataset", metavar="IMAGE",
                          positional="*")
    checkpoint: str = setting(None, MODEL, "an .npz checkpoint (official layout)", required=True)
    out: str = setting(None, OUTPUT, "folder for the three PNGs and inspect.json (created if missing)", required=True)
    dataset: str = shared("dataset", default=None, help="take the images from this dataset's test split")
    data_dir: str = shared("data_dir")
    images: int = setting(128, DATA, "use the first N images (128: as the paper's Appendix D.7)")
    batch_size: int = shared("eval_batch_size", default=32, help="images per forward pass")
    image_size: int = setting(None, MODEL, "run the model at this input side, pixels (the position embedding is "
                              "resized bilinearly; None: the checkpoint's)")
    gelu: str = shared("gelu", help="GELU form of the weights (None: the run's config.json next to the checkpoint, "
                       "else tanh)")
    filters: str = setting("auto", OUTPUT, "PCA of the RGB patch-embedding filters, or of the filters summed over "
                           "the colour channels (grey: all that acts on grey images); auto: grey for a model of mnist "
                           "or fashion-mnist (--dataset, else the run's config.json), rgb otherwise", FILTERS)
    device: str = shared("device")

    def __post_init__(self):
        if bool(self.dataset) == bool(self.files):
            raise ValueError("give either --dataset or image files (one of them)")
        check_positive_int("--images", self.images)
        check_positive_int("--batch-size", self.batch_size)
        if self.image_size is not None:
            check_positive_int("--image-size", self.image_size)
        _check_choices(self)


def add_flags(ap, cls, groups=None, defaults_none: bool = False) -> None:
    """One argument per field of the settings dataclass ``cls``: ``--name-of-field`` (a bool as
    --flag/--no-flag), with the field's type, choices and help, the help showing its default; a
    positional field as plain arguments. ``groups``: dict of argument groups by the fields' group name
    (else all go to ``ap``). ``defaults_none``: every flag defaults to None ("not given"), as training's
    do so that a preset's value survives."""
    for f in dataclasses.fields(cls):
        m = f.metadata
        g = groups[m["group"]] if groups else ap
        default = None if defaults_none else f.default
        if m["positional"]:
            g.add_argument(f.name, nargs=m["positional"], metavar=m["metavar"], help=m["help"])
        elif f.type == "bool":
            g.add_argument(flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                           help=f"{m['help']} (default: {'on' if f.default else 'off'})")
        else:
            kind = {"int": int, "float": float, "str": str}[f.type]
            given = {"required": True} if m["required"] else {"default": default}
            g.add_argument(flag(f.name), dest=f.name, type=kind, choices=m["choices"], metavar=m["metavar"],
                           help=m["help"] if m["required"] else f"{m['help']} (default: {f.default})", **given)


def cli_parser(cls, prog: str = "", description: str | None = None) -> argparse.ArgumentParser:
    """The parser of a CLI whose settings are the dataclass ``cls`` (EvaluateSettings, PredictSettings,
    PlotSettings, InspectSettings)."""
    ap = argparse.ArgumentParser(prog=prog, description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(ap, cls)
    return ap


def parse_settings(cls, argv=None, prog: str = "", description: str | None = None):
    """``cls`` (EvaluateSettings, PredictSettings, PlotSettings, InspectSettings) from the command line ``argv``
    (sys.argv if None). A bad value exits with status 2 and argparse's usage message (:class:`SystemExit`),
    naming the flag."""
    ap = cli_parser(cls, prog, description)
    args = ap.parse_args(argv)
    try:
        return cls(**vars(args))
    except ValueError as e:
        ap.error(str(e))


def flag(name: str) -> str:
    """The command-line flag of a setting: "batch_size" -> "--batch-size"."""
    return "--" + name.replace("_", "-")


def preset_names() -> list[str]:
    """The names --config accepts without a path (the files in scratchvit/presets/)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def build_parser(prog="python -m scratchvit.train", description=None) -> argparse.ArgumentParser:
    """The command-line parser, one flag per TrainSettings field, plus --config and --resume.

    Every flag defaults to None ("not given"), so that a preset's value survives; the help shows the
    dataclass's default, the value of a setting that the preset does not set.
    """
    ap = argparse.ArgumentParser(prog=prog, description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="a preset: a JSON file of settings, or the name of one in "
                    f"scratchvit/presets/ ({', '.join(preset_names())}); flags given on the command line win; a "
                    "setting the preset leaves out takes the default shown below (default: "
                    f"{DEFAULT_PRESET}, the Quickstart)")
    groups = {g: ap.add_argument_group(g) for g in GROUPS}
    add_flags(ap, TrainSettings, groups, defaults_none=True)
    groups[OUTPUT].add_argument("--resume", action="store_true", help="continue the run in --out from its "
                                "state.npz, with the settings of its config.json (only "
                                f"{', '.join(map(flag, RUNTIME))} may change)")
    return ap


def load_preset(name_or_path: str) -> dict:
    """Settings from a preset JSON file (a path, or a name in scratchvit/presets/), checked against TrainSettings.

    Raises:
        FileNotFoundError: no such preset. ValueError: not JSON, or unknown keys (named).
    """
    path = Path(name_or_path)
    if not path.exists():
        path = PRESETS_DIR / f"{name_or_path}.json"
    if not path.exists():
        raise FileNotFoundError(f"--config {name_or_path!r}: no such file, and no preset of that name "
                                f"({', '.join(preset_names())})")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"--config {path}: not valid JSON: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"--config {path}: must hold a JSON object of settings")
    TrainSettings.from_dict(d, f"--config {path}")  # unknown keys fail here, naming the file
    d.pop("_comment", None)
    return d


def resolve_settings(argv=None, description=None, note=None) -> tuple[TrainSettings, bool]:
    """(settings, resume) from the command line: defaults <- preset <- flags; --resume: the run's config.json.

    Without --config the preset is :data:`DEFAULT_PRESET` (the Quickstart), and ``note`` (a callable, if
    given) receives one line saying so, for a new run; with --resume that preset only gives the default --out.

    Raises:
        FileNotFoundError: unknown preset, or nothing to resume. ValueError: a setting that cannot work,
        or, with --resume, a flag other than the runtime ones (``RUNTIME``) that differs from the run's.
    """
    args = build_parser(description=description).parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("config", "resume")}
    d = load_preset(args.config or DEFAULT_PRESET)
    if args.config is None and not args.resume and note is not None:
        others = ", ".join(n for n in preset_names() if n != DEFAULT_PRESET)
        note(f"no --config given: running the {DEFAULT_PRESET} preset, the Quickstart "
             f"(scratchvit/presets/{DEFAULT_PRESET}.json; flags override it; --config NAME for another: {others})")
    counted = [flag(k) for k in ("steps", "epochs") if k in given]
    if counted and "time_limit" in given:
        raise ValueError(f"--time-limit and {' and '.join(counted)} both set the length of the run: give one of them "
                         "(--time-limit sets the step count from the measured step time)")
    if counted or "time_limit" in given:  # the length given on the command line beats the preset's
        d.pop("time_limit", None)
    if ("steps" in given and "epochs" not in given) or "time_limit" in given:
        d.pop("epochs", None)  # --steps or --time-limit on the command line beats a preset's epochs
    d.update(given)
    if not args.resume:
        return TrainSettings.from_dict(d, "settings"), False
    out = Path(d.get("out", TrainSettings.out))
    cfg_path = out / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"--resume: {cfg_path} not found; nothing to resume in {out}")
    saved = json.loads(cfg_path.read_text())["settings"]
    changed = [k for k in given if k not in RUNTIME and k != "out" and given[k] != saved.get(k)]
    if changed:
        raise ValueError(f"--resume continues {out} with the settings in {cfg_path}; "
                         f"{', '.join(flag(k) for k in changed)} cannot change on resume (only "
                         f"{', '.join(flag(k) for k in RUNTIME)} can); start a new run with another --out instead")
    keep = {k: given[k] for k in RUNTIME if k in given}
    return TrainSettings.from_dict({**saved, **keep, "out": str(out)}, str(cfg_path)), True
