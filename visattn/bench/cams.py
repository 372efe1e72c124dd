"""CAM benchmark: our batched CAMs against pytorch-grad-cam on timm models, for agreement of the maps and images/s.

``visattn bench cams [--models resnet18,resnet50] [--methods gradcam,...] [--device cuda] [--markdown]`` builds each
model (random weights, eval), explains the predicted class of one fixed random batch with both libraries at the same
target layer (``layer4``), and checks the maps agree to 1e-4: the exit status is 1 when one does not. It then times
img/s of both and of a plain ``torch.no_grad()`` forward pass, the floor no CAM can beat, interleaving the three round
by round so machine noise hits them alike, and reports the median.

Fairness: each side runs on its own copy of the model, and each timed call builds the CAM, calls it once and releases
its hooks (pytorch-grad-cam keeps its hooks until ``release()`` / the end of a ``with`` block), checked after every
call, so no side runs through another's hooks. Both get the same explicit targets (pytorch-grad-cam's
``ClassifierOutputTarget`` of the class our pre-pass predicted).

Two methods are compared with care:
- Eigen-CAM: an SVD fixes the component only up to sign. pytorch-grad-cam keeps the solver's sign, ours picks the one
  that correlates with the mean activation (see ``visattn/cam/eigen.py``), so each map is compared with theirs and
  with theirs for the opposite sign, and the closer one counts; the note says how many maps were flipped.
- Score-CAM (only when asked for: thousands of forward passes): pytorch-grad-cam weighs channels with a softmax across
  channels, ours with each masked image's class probability (``visattn/cam/score.py``); its difference is reported,
  not checked.

Second reference, torch-cam (``pip install torchcam``, in the ``bench`` extra), for the methods it has: its maps are
checked against ours the same way, and it is timed beside the others. The last columns time our opt-in fast path,
``create_cam(..., amp='bf16', channels_last=True)`` (bf16 autocast, channels_last images), against torch-cam, and give
how far its maps are from our float32 ones.

Peak memory is the increase over what was held before one call: on CUDA from the caching allocator's counters (device
memory only; pytorch-grad-cam's NumPy half runs on the host), on CPU from the process's peak resident set size, reset
through /proc/self/clear_refs after giving freed heap back with ``malloc_trim`` (Linux with glibc, else n/a).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from ..cam import canonical_cam_name, create_cam
from .timing import check_device, interleaved_medians, peak_memory_bytes

__all__ = ["run_cam_benchmark", "add_arguments", "run_from_args", "main", "DEFAULT_METHODS", "TOLERANCE"]

# Our method name -> pytorch-grad-cam class name.
_THEIRS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "hirescam": "HiResCAM",
           "layercam": "LayerCAM", "eigencam": "EigenCAM", "scorecam": "ScoreCAM"}
DEFAULT_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam")  # Score-CAM: on request
TOLERANCE = 1e-4  # max |ours - theirs| allowed on maps in [0, 1]
GRADCAM_TARGET = 2.5  # the speed-up over pytorch-grad-cam asked of Grad-CAM on CPU at batch 32, 224 px
FAST_TARGET = 1.5  # the speed-up over torch-cam asked of the bf16 / channels_last path, same setting
# Our method name -> torch-cam class name (it has no HiResCAM or Eigen-CAM).
_TORCHCAM = {"gradcam": "GradCAM", "gradcam++": "GradCAMpp", "xgradcam": "XGradCAM", "layercam": "LayerCAM"}
_LABELS = {"forward": "the forward pass", "ours": "visattn", "theirs": "pytorch-grad-cam", "torchcam": "torch-cam",
           "fast": "visattn (bf16, channels_last)"}
_UNCHECKED = {"scorecam": "not checked: channel weights differ by design (visattn/cam/score.py)"}


def import_grad_cam() -> ModuleType:
    """pytorch-grad-cam, or an ImportError that says how to install it."""
    try:
        import pytorch_grad_cam
    except ImportError as err:
        raise ImportError("the CAM benchmark compares against pytorch-grad-cam, which is not installed: "
                          "pip install 'visattn[bench]'") from err
    return pytorch_grad_cam


def import_torchcam() -> ModuleType | None:
    """torch-cam's methods module, or None when it is not installed (its columns then read n/a)."""
    try:
        import torchcam.methods
    except ImportError:
        return None
    return torchcam.methods


def torchcam_call(tcm: ModuleType, method: str, model: nn.Module, layer: str, x: torch.Tensor,
                  classes: torch.Tensor) -> torch.Tensor:
    """One torch-cam call as a user makes it, its layer map fused to the input size as ours are."""
    from ..cam.base import fuse_layer_maps

    extractor = getattr(tcm, _TORCHCAM[method])(model, target_layer=layer)
    try:
        scores = model(x)
        maps = extractor(class_idx=[int(c) for c in classes], scores=scores)[0]
    finally:
        extractor.remove_hooks()
    model.zero_grad(set_to_none=True)
    return fuse_layer_maps([maps.float()], (x.shape[-2], x.shape[-1]))


def build_model(name: str, seed: int, device: str, **model_kwargs: Any) -> nn.Module:
    """A timm model with random weights in eval mode.

    Norm layers get random affine parameters and running statistics: timm zero-initialises the last norm of every
    residual branch, and with those zeros the maps would not depend on the branches at all.
    """
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **model_kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine and m.track_running_stats:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.to(device).eval()


def _check_no_hooks(model: nn.Module, side: str) -> None:
    left = [name for name, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    if left:
        raise RuntimeError(f"{side} left forward hooks on {left}; its timings would slow the next measurement")


def their_call(gc: ModuleType, method: str, model: nn.Module, layer: str, x: torch.Tensor, targets: list[Any]
               ) -> np.ndarray:
    """One pytorch-grad-cam call as a user makes it: build the CAM, call it, release its hooks."""
    with getattr(gc, _THEIRS[method])(model, [model.get_submodule(layer)]) as cam:
        maps = cam(input_tensor=x, targets=targets)
    model.zero_grad(set_to_none=True)  # it leaves every parameter's gradient behind
    return maps


def _their_reference(gc: ModuleType, method: str, model: nn.Module, layer: str, x: torch.Tensor, targets: list[Any]
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """pytorch-grad-cam's maps, and for Eigen-CAM also the maps it gives for the opposite SVD sign."""
    flipped = None
    with getattr(gc, _THEIRS[method])(model, [model.get_submodule(layer)]) as cam:
        maps = cam(input_tensor=x, targets=targets)
        if method == "eigencam":
            from pytorch_grad_cam.utils.image import scale_cam_image
            from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

            # Their steps (EigenCAM.get_cam_image, compute_cam_per_layer, aggregate_multi_layers) on -projection.
            projection = get_2d_projection(cam.activations_and_grads.activations[0].numpy())
            per_layer = scale_cam_image(np.maximum(-projection, 0), (x.shape[-1], x.shape[-2]))
            flipped = scale_cam_image(np.maximum(per_layer, 0))
    model.zero_grad(set_to_none=True)
    return maps, flipped


def _max_abs_diff(ours: torch.Tensor, theirs: np.ndarray, flipped: np.ndarray | None) -> tuple[float, int]:
    """Largest |ours - theirs| over all maps, and how many maps matched the opposite-sign reference better."""
    ours_np = ours.detach().float().cpu().numpy()
    diff = np.abs(ours_np - theirs).reshape(len(ours_np), -1).max(1)
    flips = 0
    if flipped is not None:
        diff_flipped = np.abs(ours_np - flipped).reshape(len(ours_np), -1).max(1)
        flips = int((diff_flipped < diff).sum())
        diff = np.minimum(diff, diff_flipped)
    return float(diff.max()), flips


def run_cam_benchmark(
        models: Sequence[str] = ("resnet18", "resnet50"),
        batch_size: int | None = None,
        image_size: int | None = None,
        methods: Sequence[str] = DEFAULT_METHODS,
        device: str = "cpu",
        repeats: int | None = None,
        quick: bool = False,
        markdown: bool = False,
        memory: bool = True,
        target_layer: str = "layer4",
        seed: int = 0,
        model_kwargs: dict[str, Any] | None = None,
        printer: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Compare our CAMs with pytorch-grad-cam's on each timm model and print one table row per (model, method).

    Args:
        models: timm model names (built with random weights, ``pretrained=False``).
        batch_size: images per call; None for 32 (2 with ``quick``).
        image_size: input height and width; None for 224 (64 with ``quick``).
        methods: our method names (see :func:`visattn.cam.list_cams`); ``'scorecam'`` is very slow.
        device: ``'cpu'`` or ``'cuda'``.
        repeats: timed rounds per row; None for 5 (1 with ``quick``), after one warm-up round (none with ``quick``).
        quick: smoke test: small default shapes and a single timed round.
        markdown: print a Markdown table instead of aligned text.
        memory: also measure the peak memory of one call of each library.
        target_layer: module name explained in every model (``'layer4'`` for ResNets).
        seed: seed of the weights and of the random batch.
        model_kwargs: extra keyword arguments for ``timm.create_model`` (e.g. ``layers=[1, 1, 1, 1]``).
        printer: where lines go.

    Returns:
        One dict per row, with ``max_abs_diff`` and ``agrees`` (None where the difference is not checked).

    Raises:
        ImportError: pytorch-grad-cam is not installed.
        ValueError: an unknown method, or a bad size or count.

    Example:
        >>> rows = run_cam_benchmark(models=["resnet18"], methods=["gradcam"])
        >>> all(r["agrees"] for r in rows)
        True
    """
    gc = import_grad_cam()
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    check_device(device)
    names = [canonical_cam_name(m) for m in methods]
    missing = [m for m in names if m not in _THEIRS]
    if missing or not names:
        raise ValueError(f"methods must name CAMs that pytorch-grad-cam also has ({', '.join(_THEIRS)}), "
                         f"got {list(methods)!r}")
    batch_size = (2 if quick else 32) if batch_size is None else batch_size
    image_size = (64 if quick else 224) if image_size is None else image_size
    repeats = (1 if quick else 5) if repeats is None else repeats
    warmup = 0 if quick else 1
    for arg, value in (("batch_size", batch_size), ("image_size", image_size), ("repeats", repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")

    tcm = import_torchcam()
    from ..system.machine import describe_machine

    printer(f"CAM benchmark on {device}: batch {batch_size} x 3x{image_size}x{image_size}, target layer "
            f"{target_layer!r}; {describe_machine()}; pytorch-grad-cam {_version('grad-cam')}, torch-cam "
            f"{_version('torchcam') if tcm is not None else 'not installed'}, load average "
            f"{' '.join(f'{v:.2f}' for v in _loadavg())}; median of {repeats} round(s); ratio = ours img/s / "
            f"pytorch-grad-cam img/s; fast = amp='bf16', channels_last=True")
    rows: list[dict[str, Any]] = []
    for model_name in models:
        base = build_model(model_name, seed, device, **(model_kwargs or {}))
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(batch_size, 3, image_size, image_size, generator=g).to(device)
        with torch.no_grad():
            classes = base(x).argmax(1)
        sides = ("ours", "theirs", "torchcam", "fast")
        setup = _Setup(gc=gc, tcm=tcm, models={"forward": base, **{side: copy.deepcopy(base) for side in sides}},
                       layer=target_layer, x=x, classes=classes,
                       their_targets=[ClassifierOutputTarget(int(c)) for c in classes], device=device)
        for method in names:
            seconds, diff, flips, peaks, others = _measure(setup, method, repeats, warmup, memory)
            issue_setting = device == "cpu" and batch_size == 32 and image_size == 224
            rows.append(_row(model_name, method, batch_size, image_size, seconds, diff, flips, peaks, issue_setting,
                             others))
            printer(_format_row(rows[-1], markdown, header=len(rows) == 1))
    return rows


@dataclass
class _Setup:
    """One model's comparison: a copy of the model per side, the batch and the explained classes."""

    gc: ModuleType
    tcm: ModuleType | None
    models: dict[str, nn.Module]  # 'forward', 'ours', 'theirs', 'torchcam', 'fast'
    layer: str
    x: torch.Tensor
    classes: torch.Tensor
    their_targets: list[Any]
    device: str

    def forward(self) -> torch.Tensor:
        with torch.no_grad():
            return self.models["forward"](self.x)

    def ours(self, method: str) -> torch.Tensor:
        with create_cam(method, self.models["ours"], self.layer) as cam:
            return cam(self.x, self.classes)

    def theirs(self, method: str) -> np.ndarray:
        return their_call(self.gc, method, self.models["theirs"], self.layer, self.x, self.their_targets)

    def torchcam(self, method: str) -> torch.Tensor:
        assert self.tcm is not None
        return torchcam_call(self.tcm, method, self.models["torchcam"], self.layer, self.x, self.classes)

    def fast(self, method: str) -> torch.Tensor:
        with create_cam(method, self.models["fast"], self.layer, amp="bf16", channels_last=True) as cam:
            return cam(self.x, self.classes)

    def check_no_hooks(self, side: str) -> None:
        _check_no_hooks(self.models[side], _LABELS[side])


def _measure(setup: _Setup, method: str, repeats: int, warmup: int, memory: bool
             ) -> tuple[dict[str, float], float, int, dict[str, int | None], dict[str, float]]:
    """Seconds per call of each side, max |ours - theirs|, Eigen-CAM sign flips, peak memory of each library, and
    the other differences: torch-cam's maps and the fast path's against ours."""
    # The comparison calls double as the first warm-up round.
    setup.forward()
    ours_maps = setup.ours(method)
    setup.check_no_hooks("ours")
    their_maps, flipped = _their_reference(setup.gc, method, setup.models["theirs"], setup.layer, setup.x,
                                           setup.their_targets)
    setup.check_no_hooks("theirs")
    diff, flips = _max_abs_diff(ours_maps, their_maps, flipped)
    calls: dict[str, Callable[[], object]] = {
        "forward": setup.forward, "ours": partial(setup.ours, method), "theirs": partial(setup.theirs, method),
        "fast": partial(setup.fast, method)}
    others = {"fast": float((setup.fast(method).float() - ours_maps.float()).abs().max())}
    setup.check_no_hooks("fast")
    if setup.tcm is not None and method in _TORCHCAM:
        others["torchcam"] = float((setup.torchcam(method) - ours_maps.float()).abs().max())
        setup.check_no_hooks("torchcam")
        calls["torchcam"] = partial(setup.torchcam, method)
    del ours_maps, their_maps, flipped

    seconds = interleaved_medians(calls, setup.device, repeats, warmup, after=setup.check_no_hooks)
    peaks: dict[str, int | None] = {
        side: peak_memory_bytes(calls[side], setup.device) if memory else None for side in ("ours", "theirs")}
    return seconds, diff, flips, peaks, others


def _row(model: str, method: str, batch: int, size: int, seconds: dict[str, float], diff: float, flips: int,
         peaks: dict[str, int | None], issue_setting: bool, others: dict[str, float]) -> dict[str, Any]:
    ratio = seconds["theirs"] / seconds["ours"]
    torchcam = seconds.get("torchcam")
    fast_ratio = torchcam / seconds["fast"] if torchcam else None
    notes = []
    if method == "gradcam" and issue_setting:
        notes.append(f"target >= {GRADCAM_TARGET:g}x: {'PASS' if ratio >= GRADCAM_TARGET else 'MISS'}")
        if fast_ratio is not None:
            notes.append(f"fast vs torch-cam target >= {FAST_TARGET:g}x: "
                         f"{'PASS' if fast_ratio >= FAST_TARGET else 'MISS'}")
    if "torchcam" in others and others["torchcam"] > TOLERANCE:
        notes.append(f"torch-cam maps differ by {others['torchcam']:.1e}")
    if method == "eigencam":
        notes.append(f"up to the SVD sign: {flips}/{batch} maps flipped")
    if method in _UNCHECKED:
        notes.append(_UNCHECKED[method])
    agrees = None if method in _UNCHECKED else diff <= TOLERANCE
    return {
        "model": model, "method": method, "batch": batch, "image_size": size,
        "ours_img_s": batch / seconds["ours"], "theirs_img_s": batch / seconds["theirs"], "ratio": ratio,
        "forward_img_s": batch / seconds["forward"], "max_abs_diff": diff, "agrees": agrees,
        "torchcam_img_s": batch / torchcam if torchcam else None,
        "vs_torchcam": torchcam / seconds["ours"] if torchcam else None,
        "torchcam_max_abs_diff": others.get("torchcam"),
        "fast_img_s": batch / seconds["fast"], "fast_vs_torchcam": fast_ratio, "fast_max_abs_diff": others["fast"],
        "ours_peak_mb": None if peaks["ours"] is None else peaks["ours"] / 2**20,
        "theirs_peak_mb": None if peaks["theirs"] is None else peaks["theirs"] / 2**20,
        "note": "; ".join(notes),
    }


_COLUMNS = [("model", "model", 10), ("method", "method", 10), ("ours_img_s", "ours img/s", 11),
            ("theirs_img_s", "pytorch-grad-cam img/s", 23), ("ratio", "ratio", 7),
            ("forward_img_s", "forward-only img/s", 19), ("max_abs_diff", "max |Δ|", 9),
            ("torchcam_img_s", "torch-cam img/s", 16), ("vs_torchcam", "vs torch-cam", 13),
            ("torchcam_max_abs_diff", "torch-cam |Δ|", 14), ("fast_img_s", "fast img/s", 11),
            ("fast_vs_torchcam", "fast vs torch-cam", 18), ("fast_max_abs_diff", "fast |Δ| vs float32", 20),
            ("ours_peak_mb", "ours peak MiB", 14), ("theirs_peak_mb", "theirs peak MiB", 16), ("note", "note", 0)]


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if key in ("ratio", "vs_torchcam", "fast_vs_torchcam"):
        return f"{value:.2f}x"
    if key.endswith("max_abs_diff"):
        return f"{value:.1e}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _format_row(row: dict[str, Any], markdown: bool, header: bool) -> str:
    cells = [_cell(key, row.get(key)) for key, _, _ in _COLUMNS]
    titles = [title for _, title, _ in _COLUMNS]
    if markdown:
        escaped = [title.replace("|", "\\|") for title in titles]  # "max |Δ|" must not split a Markdown cell
        line = "| " + " | ".join(cells) + " |"
        if header:
            line = "| " + " | ".join(escaped) + " |\n|" + "---|" * len(titles) + "\n" + line
        return line
    widths = [width for _, _, width in _COLUMNS]
    line = "  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True)).rstrip()
    if header:
        line = "  ".join(t.ljust(w) for t, w in zip(titles, widths, strict=True)).rstrip() + "\n" + line
    return line


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


def _loadavg() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:  # not available on this platform
        return (float("nan"),) * 3


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the benchmark's options to ``parser`` (the ``visattn bench cams`` sub-command uses the same ones)."""
    parser.add_argument("--models", type=_csv, default=["resnet18", "resnet50"],
                        help="comma-separated timm model names (default resnet18,resnet50)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per call (default 32; 2 with --quick)")
    parser.add_argument("--image-size", type=int, default=None, help="input size (default 224; 64 with --quick)")
    parser.add_argument("--methods", type=_csv, default=list(DEFAULT_METHODS),
                        help=f"comma-separated CAMs (default {','.join(DEFAULT_METHODS)}; 'scorecam' is very slow)")
    parser.add_argument("--device", default="cpu", help="'cpu' or 'cuda' (default cpu)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per row (default 5; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="small shapes and one timed round (smoke test)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (for the README)")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory calls")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Run the benchmark from parsed :func:`add_arguments` options; 1 when a checked map differs by > 1e-4."""
    rows = run_cam_benchmark(models=args.models, batch_size=args.batch_size, image_size=args.image_size,
                             methods=args.methods, device=args.device, repeats=args.repeats, quick=args.quick,
                             markdown=args.markdown, memory=args.memory)
    failed = [f"{r['model']}/{r['method']} ({r['max_abs_diff']:.1e})" for r in rows if r["agrees"] is False]
    if failed:
        print(f"maps differ from pytorch-grad-cam's by more than {TOLERANCE:g}: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m visattn.bench.cams [options]``; see :func:`add_arguments`."""
    parser = argparse.ArgumentParser(prog="visattn bench cams", description=(__doc__ or "").splitlines()[0])
    return run_from_args(add_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
