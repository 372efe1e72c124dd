"""The training config: one dataclass per section, filled from YAML, then ``key=value`` overrides.

Sections, in the order a reader meets them in ``train()``: data, model, optim, loop, eval, checkpoint. Every field
has a default, so a YAML file only states what differs; ``load_train_config`` rejects unknown keys and wrong types
(naming the closest valid key) before anything runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from ..cam import DEFAULT_OVERLAY_METHODS, canonical_cam_name
from .loader import load_config

__all__ = [
    "DataConfig",
    "SideConfig",
    "FusionConfig",
    "AttnConfig",
    "ModelConfig",
    "OptimConfig",
    "LoopConfig",
    "EvalConfig",
    "CheckpointConfig",
    "TrainConfig",
    "load_train_config",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_at_least(section: object, minimum: int | float, *names: str) -> None:
    """Raise ValueError naming the first field in ``names`` that is set (not None) and below ``minimum`` or NaN."""
    for name in names:
        value = getattr(section, name)
        if value is not None and not value >= minimum:  # `not >=`: NaN fails too
            raise ValueError(f"{name} must be >= {minimum}, got {value}")


@dataclass
class SideConfig:
    """A second input per image, a feature vector, for fusion models (``model.fusion``).

    ``imagefolder``: CSV files with one row per image, the image's path relative to its folder in ``file_column`` and
    the features in ``columns``. ``shapes``: the built-in data's own side vector, the class's one-hot code plus
    Gaussian noise (informative, but noisy).
    """

    csv: str | None = None  # imagefolder: the rows of the images under data.root
    val_csv: str | None = None  # imagefolder: the rows of the images under data.val_root
    columns: list[str] | None = None  # imagefolder: the feature columns, in order
    file_column: str = "file"
    noise: float = 1.0  # shapes: std of the noise added to the class's one-hot code
    features: int = 16  # shapes: vector width (the first 10 carry the one-hot code, the rest only noise)

    def __post_init__(self) -> None:
        if (self.csv is None) != (self.columns is None):
            raise ValueError(f"csv and columns go together (the file and its feature columns), got csv={self.csv!r}, "
                             f"columns={self.columns!r}")
        if self.columns is not None and (not self.columns or len(set(self.columns)) != len(self.columns)):
            raise ValueError(f"columns must name distinct feature columns, got {self.columns}")
        if not self.noise >= 0 or math.isinf(self.noise):
            raise ValueError(f"noise must be a finite number >= 0, got {self.noise}")
        _check_at_least(self, 1, "features")


@dataclass
class DataConfig:
    """Which data, how much of it, and how it is augmented.

    ``name``: ``'shapes'`` (built in, no files), ``'cifar10'`` / ``'cifar100'`` (torchvision layout under ``root``),
    ``'imagefolder'`` (``root`` = train folder, ``val_root`` = val folder; a Tiny-ImageNet-200 ``val/`` is read as is).
    """

    name: Literal["shapes", "cifar10", "cifar100", "imagefolder"] = "shapes"
    root: str | None = None
    val_root: str | None = None
    download: bool = False
    image_size: int = 32
    num_train: int | None = None  # shapes: samples to generate; other data sets: a cap (None = all)
    num_val: int | None = None
    classes: list[str] | int | None = None  # imagefolder: class subset (folder names) or the first N classes
    max_per_class: int | None = None  # imagefolder: images per class cap
    augment: Literal["cifar", "crop_flip", "imagenet", "none"] = "cifar"  # train preset; crop_flip = cifar - cutout
    crop_padding: int | None = None  # cifar / crop_flip: reflect-pad this many pixels before the random crop (size/8)
    train_transforms: list[dict[str, Any]] | None = None  # explicit albumentations list, e.g. [{name: HorizontalFlip}]
    eval_transforms: list[dict[str, Any]] | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    on_corrupt: Literal["skip", "fail"] = "skip"  # unreadable images: skip with a summary warning, or stop
    in_memory: bool = False  # imagefolder: decode every image once and keep it in RAM; epochs then skip decoding
    # Hold this many training images (or this fraction of them) out as the validation set, which picks the best
    # epoch; the data set's own val / test split is then the test set, scored once at the end of the run.
    val_split: int | float | None = None
    side: SideConfig | None = None  # a feature vector per image, for model.fusion
    batch_size: int = 128
    eval_batch_size: int | None = None  # default: 2 x batch_size
    num_workers: int = 0
    seed: int = 0  # the built-in data's generator seed

    def __post_init__(self) -> None:
        _check_at_least(self, 1, "image_size", "num_train", "num_val", "max_per_class", "batch_size", "eval_batch_size")
        _check_at_least(self, 0, "num_workers", "crop_padding")
        if isinstance(self.classes, int) and not isinstance(self.classes, bool) and self.classes < 1:
            raise ValueError(f"classes must be >= 1 when it counts the first N classes, got {self.classes}")
        if isinstance(self.classes, list):
            repeated = sorted({c for c in self.classes if self.classes.count(c) > 1})
            if repeated:  # each would become two labels for the same images
                raise ValueError(f"classes lists {repeated} more than once")
        if self.val_split is not None and not (self.val_split >= 1 if isinstance(self.val_split, int)
                                               else 0 < self.val_split < 1):
            raise ValueError(f"val_split must be a count >= 1 or a fraction in (0, 1), got {self.val_split}")
        if self.side is not None and self.name in ("cifar10", "cifar100"):
            raise ValueError(f"side: {self.name} has no side vectors; use an imagefolder copy with side.csv")
        if self.side is not None and self.name == "imagefolder" and self.side.val_csv is None:
            raise ValueError("side.val_csv must name the CSV of the images under data.val_root (paths relative to it)")
        if self.side is not None and (self.name == "imagefolder") != (self.side.csv is not None):
            raise ValueError("side: an imagefolder reads its vectors from side.csv (and side.val_csv) with "
                             "side.columns; the built-in shapes data makes its own and takes no csv")
        if not all(math.isfinite(m) for m in self.mean) or not all(s > 0 and math.isfinite(s) for s in self.std):
            raise ValueError(f"mean must be finite and std finite and > 0, got mean={self.mean}, std={self.std}")


@dataclass
class AttnConfig:
    """Attention put into the model after its weights load: ``visattn.inject(model, block, stages=..., ...)``, on any
    timm CNN (stages by output stride: 4 -> 1, ..., 32 -> 4)."""

    block: str = "cbam"
    stages: list[int] | None = None  # default: every stage
    blocks: Literal["all", "last"] | list[int] = "all"  # within each stage
    replace: bool = False  # swap attention the model already has (an EfficientNet's SE) instead of following it
    init: Literal["identity", "default"] = "identity"  # identity: the loaded model computes what it did, at step 0
    kwargs: dict[str, Any] = field(default_factory=dict)  # the block's options, e.g. {rd_ratio: 0.125}


@dataclass
class FusionConfig:
    """An image backbone and the side vector of ``data.side``, fused by a two-input block, then a linear classifier."""

    inputs: Literal["both", "image", "side"] = "both"  # what the classifier sees; image / side alone: the baselines
    block: str = "gated_fusion"  # the two-input block fusing the pooled image features with the side vector
    out_channels: int | None = None  # the fused width; default: the backbone's feature width
    side_hidden: int = 64  # inputs='side': the hidden width of the side-only MLP

    def __post_init__(self) -> None:
        _check_at_least(self, 1, "out_channels", "side_hidden")


@dataclass
class ModelConfig:
    """Any timm model name (visattn registers ``resnet18_cbam`` and friends), plus visattn's options."""

    # Read under their new names: configs and weights files written before the rename keep loading.
    RENAMED_KEYS: ClassVar[dict[str, str]] = {"inject": "attn"}

    name: str = "resnet18"
    pretrained: str | None = None  # local weights file (.safetensors or a torch state_dict), never a download
    small_input: bool = False  # 32 px inputs: a ResNet's 3x3 stem conv, no max-pool; other CNNs lose early strides
    small_input_stride: Literal[1, 2] = 1
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to timm.create_model (layers, channels, ...)
    attn: AttnConfig | None = None  # attention injected after the weights load (visattn.inject)
    fusion: FusionConfig | None = None  # a second, non-image input (data.side): see FusionConfig
    drop_path_rate: float = 0.0


@dataclass
class OptimConfig:
    """Optimiser, learning-rate schedule and regularisation."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 5e-4  # not applied to norms, biases and other 1-D parameters
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    label_smoothing: float = 0.0
    grad_clip: float | None = None  # max global grad norm

    def __post_init__(self) -> None:
        # Comparisons written so that NaN fails them: `lr=.nan` must not reach the optimiser.
        if not self.lr > 0 or math.isinf(self.lr):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must each be in [0, 1), got {self.betas}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 (or null for none), got {self.grad_clip}")
        _check_at_least(self, 0, "momentum", "weight_decay", "warmup_epochs")


@dataclass
class LoopConfig:
    """How long and how: epochs, device, precision, determinism."""

    epochs: int = 10
    seed: int = 0
    device: str = "auto"  # 'auto' = cuda if available, else cpu
    # autocast dtype: auto = bf16 on CUDA, and on a CPU bf16 only where a timed step shows it faster; fp16: CUDA only
    amp: Literal["auto", "none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    compile: bool = False  # torch.compile the model
    # CPU: let glibc's malloc keep large freed blocks for reuse (as CUDA's caching allocator does) instead of mapping
    # them anew every step; 1.3-1.9x faster steps measured on 2 cores. Process-wide (visattn.system.allocator).
    reuse_allocations: bool = True
    deterministic: bool = False  # torch.use_deterministic_algorithms; same config + seed -> same metrics on CPU
    ema_decay: float | None = None  # keep an EMA of the weights and evaluate it too
    tensorboard: bool = False
    progress: bool = True  # tqdm progress bar per epoch

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")


@dataclass
class EvalConfig:
    """When to evaluate, and what to explain at the end."""

    every: int = 1  # epochs
    overlays: int = 0  # at the end, write CAM overlays of this many validation images into <run>/overlays
    overlay_methods: list[str] = field(default_factory=lambda: list(DEFAULT_OVERLAY_METHODS))
    overlay_layers: list[str] | None = None  # CAM target layers; None: the last spatial stage

    def __post_init__(self) -> None:
        if self.every < 1 or self.overlays < 0:
            raise ValueError(f"every must be >= 1 and overlays >= 0, got every={self.every}, overlays={self.overlays}")
        for method in self.overlay_methods:
            canonical_cam_name(method)  # raises ValueError naming the valid methods


@dataclass
class CheckpointConfig:
    """Where the run folder goes and what is kept in it."""

    output_dir: str = "runs"
    run_name: str | None = None  # default: the config file's stem
    every: int = 1  # epochs between checkpoints (the last epoch always writes one)

    def __post_init__(self) -> None:
        _check_at_least(self, 1, "every")


@dataclass
class TrainConfig:
    """Everything one training run needs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        side, fusion = self.data.side, self.model.fusion
        if fusion is not None and side is None:
            raise ValueError("model.fusion fuses the image with data.side's vector; set data.side (csv and columns "
                             "for an imagefolder, or {} for the built-in shapes data's own)")
        if side is not None and fusion is None:
            raise ValueError("data.side gives every image a second input, which only a fusion model reads; set "
                             "model.fusion (e.g. {inputs: both})")
        if fusion is not None and self.eval.overlays:
            raise ValueError("eval.overlays explains single-input models; a fusion model has two inputs: set "
                             "eval.overlays=0")


def load_train_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Defaults, then the YAML file at ``path`` (and what it ``extends``), then ``key=value`` overrides.

    Raises:
        ConfigError: unknown keys, wrong types or invalid values, naming the dotted key and the closest valid one.

    Example:
        >>> cfg = load_train_config('configs/quickstart.yaml', ['optim.lr=0.05', 'loop.epochs=3'])
    """
    return load_config(TrainConfig, path, overrides)
