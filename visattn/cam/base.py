"""The machinery every CAM shares: hooks on the target layers, the model's state kept and restored, map fusion.

Lessons from pytorch-grad-cam's issue tracker shape this file: hooks are removed on exit and removal is idempotent
(#78, #132), the model's train/eval flags and ``requires_grad`` are put back even when an exception is raised (#195,
#483), and nothing is kept between calls, so repeated calls do not grow memory (#88).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..utils import input_channels, model_device_dtype, user_stacklevel
from .layers import LayerSpec, resolve_layers
from .targets import Targets, target_classes, target_scores

__all__ = ["BaseCAM", "CamResult", "normalize_maps", "fuse_layer_maps"]

_T = TypeVar("_T")
_EPS = 1e-7  # as pytorch-grad-cam's scale_cam_image, so that maps agree to float rounding


@dataclass
class CamResult:
    """Everything one :meth:`BaseCAM.explain` call computed.

    Attributes:
        maps: ``(B, H, W)`` saliency at input resolution, each image scaled to ``[0, 1]``; float32 (float64 for a
            float64 model).
        layer_maps: per target layer, the ``(B, h, w)`` map at the layer's resolution after ReLU, before scaling.
        logits: ``(B, K)`` model output for the unmodified images.
        classes: ``(B,)`` explained class per image, or None when the target was a callable.
    """

    maps: torch.Tensor
    layer_maps: dict[str, torch.Tensor]
    logits: torch.Tensor
    classes: torch.Tensor | None


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Scale each ``(..., H, W)`` map to ``[0, 1]`` by its own min and max; a constant map becomes all zeros."""
    flat = maps.flatten(-2)
    flat = flat - flat.amin(-1, keepdim=True)
    flat = flat / (flat.amax(-1, keepdim=True) + _EPS)
    return flat.view_as(maps)


def fuse_layer_maps(layer_maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Scale each layer's map, upsample it bilinearly to ``size``, average the layers and scale again.

    This is pytorch-grad-cam's order of operations (scale, resize, mean, scale), kept so both give the same maps.
    """
    upsampled = [F.interpolate(normalize_maps(m)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
                 for m in layer_maps]
    fused = torch.stack(upsampled).clamp_min(0).mean(0)
    return normalize_maps(fused)


class BaseCAM:
    """Base for class activation map methods; subclasses implement :meth:`_layer_maps`.

    Use it as a callable, or as a context manager to keep the hooks attached over many calls::

        with GradCAM(model) as cam:
            for images in loader:
                maps = cam(images)          # (B, H, W) in [0, 1]

    While attached, every module is in eval mode and no parameter requires grad (so backward stops at the target
    activation: no parameter gradients, nothing below the target layer). On exit — or after a call made outside a
    ``with`` block — hooks are removed and each module's ``training`` flag and each parameter's ``requires_grad`` are
    restored, even when an exception was raised.

    Args:
        model: the classifier, mapping ``(B, 3, H, W)`` to logits ``(B, K)``.
        target_layers: module name(s), fnmatch pattern(s) or module(s) whose output feature maps are explained; several
            layers are fused by averaging their scaled maps. None picks the model's last spatial stage (timm's
            ``feature_info``, else the last module with a spatial output).
        amp: ``'bf16'`` runs the model's forward pass under bfloat16 autocast (fast on GPUs and on CPUs with
            AVX-512-BF16 or AMX); the maps are still computed in float32. Opt-in: the maps then differ from the
            float32 ones by bf16 rounding (docs/benchmarks.md gives the measured difference).
        channels_last: feed the images in channels_last memory format, which convolutions then keep (the model's
            own parameters are left as they are).
    """

    name: ClassVar[str] = ""
    uses_gradients: ClassVar[bool] = True

    def __init__(self, model: nn.Module, target_layers: LayerSpec = None, *, amp: str = "none",
                 channels_last: bool = False) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if amp not in ("none", "bf16"):
            raise ValueError(f"amp must be 'none' or 'bf16', got {amp!r}")
        self.model = model
        self.amp = amp
        self.channels_last = bool(channels_last)
        self.layer_spec = target_layers  # as given; `layers` holds the resolved (name, module) pairs
        # Resolved now when given, so a typo fails at construction; the default may need an input to probe with.
        self.layers: list[tuple[str, nn.Module]] | None = (
            resolve_layers(model, target_layers) if target_layers is not None else None)
        self._handles: list[RemovableHandle] = []
        self._saved: tuple[list[tuple[nn.Module, bool]], list[tuple[nn.Parameter, bool]]] | None = None
        self._activations: dict[str, torch.Tensor] = {}
        self._runs: dict[str, int] = {}
        self._capturing = False
        self._warned_1x1 = False

    # --- state: attach / restore -------------------------------------------------------------------------------
    def __enter__(self) -> BaseCAM:
        self._attach()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def attached(self) -> bool:
        """True between ``__enter__`` and ``close()``."""
        return self._saved is not None

    def _attach(self) -> None:
        if self._saved is not None:
            return
        self._saved = ([(m, m.training) for m in self.model.modules()],
                       [(p, p.requires_grad) for p in self.model.parameters()])
        try:
            self.model.eval()
            for p in self.model.parameters():
                p.requires_grad_(False)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Remove the hooks and restore the model's flags. Safe to call any number of times."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._activations.clear()
        if self._saved is not None:
            modules, params = self._saved
            for module, training in modules:
                module.training = training
            for param, requires_grad in params:
                param.requires_grad_(requires_grad)
            self._saved = None

    def _hook(self, name: str) -> Any:
        def capture(module: nn.Module, inputs: Any, output: Any) -> torch.Tensor | None:
            if not self._capturing:
                return None
            if not isinstance(output, torch.Tensor) or output.ndim != 4:
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                raise ValueError(f"target layer {name!r} must output a (B, C, H, W) feature map, got {shape}")
            self._runs[name] = self._runs.get(name, 0) + 1
            if self.uses_gradients and output.requires_grad:
                # An earlier target layer already started the graph: keep this output in it, so that layer's
                # gradient still flows through this one.
                saved = output
            else:
                # A fresh leaf: the backward pass starts from the score and stops here.
                saved = output.detach().requires_grad_(self.uses_gradients)
            self._activations[name] = saved
            # The layers above get a clone, so their in-place ops (timm's ReLU(inplace=True), `x += shortcut`) neither
            # change the saved activations nor fail on a leaf that requires grad.
            return saved.clone()
        return capture

    def _ensure_hooks(self, images: torch.Tensor) -> None:
        if self.layers is None:
            self.layers = resolve_layers(self.model, self.layer_spec, example=images)
        if not self._handles:
            self._handles = [module.register_forward_hook(self._hook(name)) for name, module in self.layers]

    # --- computing ---------------------------------------------------------------------------------------------
    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a (B, C, H, W) float tensor, got {type(images).__name__}")
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"images must be a (B, C, H, W) float tensor (normalised model input), "
                             f"got shape {tuple(images.shape)} dtype {images.dtype}")
        expected = input_channels(self.model)  # None for non-timm models: their own forward names the mismatch
        if expected is not None and images.shape[1] != expected:
            raise ValueError(f"images have {images.shape[1]} channels but the model's stem conv takes {expected}; "
                             "convert greyscale / RGBA images to RGB first")
        peak = float(images.detach().abs().amax()) if images.numel() else 0.0
        if peak > 20:  # normalised inputs stay within a few units; 0-255 pixel values do not
            # A warning, not an error: a model trained on raw pixels or with a tiny std is valid, only unusual.
            warnings.warn(f"images reach |{peak:.0f}|: they look like raw 0-255 pixel values; unless the model was "
                          "trained on such input, normalise them as it was trained (e.g. the training config's eval "
                          "transform)", UserWarning, stacklevel=user_stacklevel())
        device, dtype = model_device_dtype(self.model)
        images = images.detach().to(device=device, dtype=dtype)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def forward_capture(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run the model once, returning its logits and each target layer's output (a leaf tensor)."""
        self._activations.clear()
        self._runs.clear()
        self._capturing = True
        try:
            autocast = torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.amp == "bf16")
            with torch.set_grad_enabled(self.uses_gradients), autocast:
                logits = self.model(images)
        finally:
            self._capturing = False
        assert self.layers is not None
        for name, _ in self.layers:
            runs = self._runs.get(name, 0)
            if runs != 1:
                hint = ""
                if runs == 0 and any(getattr(m, "grad_checkpointing", False) is True for m in self.model.modules()):
                    hint = ("; timm's gradient checkpointing runs a stage's blocks without calling the stage: call "
                            f"model.set_grad_checkpointing(False) to explain, or target a block such as '{name}.0'")
                raise ValueError(f"target layer {name!r} ran {runs} times in one forward pass; choose a module that "
                                 f"runs exactly once{hint}")
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            raise ValueError(f"the model must return logits of shape (B, K), got "
                             f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
        activations = dict(self._activations)
        self._activations.clear()
        return logits, activations

    def explain(self, images: torch.Tensor, targets: Targets = None) -> CamResult:
        """Saliency maps for a batch, with the logits and the explained classes.

        Args:
            images: ``(B, C, H, W)`` normalised model input; moved to the model's device and dtype.
            targets: None for the predicted class, a class index for all images, one index per image, or a callable
                mapping logits ``(B, K)`` to scores ``(B,)``.

        Returns:
            A :class:`CamResult`; ``.maps`` is ``(B, H, W)`` in ``[0, 1]`` on the model's device.

        Example:
            >>> result = GradCAM(model).explain(images, targets=3)
        """
        return self.run(images, lambda x: self.result(x, *self._layer_maps(x, targets)))

    def run(self, images: torch.Tensor, compute: Callable[[torch.Tensor], _T]) -> _T:
        """``compute(images)`` with everything :meth:`explain` sets up: the images checked and moved to the model's
        device and dtype, the hooks on the target layers, the model in eval mode without parameter gradients. The
        state is restored afterwards (unless inside a ``with`` block, which restores it on exit)."""
        if self.uses_gradients and torch.is_inference_mode_enabled():
            raise RuntimeError(f"{type(self).__name__} needs gradients, which torch.inference_mode() forbids; call it "
                               "outside inference_mode (torch.no_grad() is fine)")
        called_outside_with = not self.attached
        self._attach()
        try:
            images = self._check_images(images)
            self._ensure_hooks(images)
            return compute(images)
        finally:
            self._activations.clear()
            if called_outside_with:
                self.close()

    def result(self, images: torch.Tensor, logits: torch.Tensor, classes: torch.Tensor | None,
               layer_maps: dict[str, torch.Tensor]) -> CamResult:
        """Fuse per-layer maps (``(B, h, w)``, after ReLU) into a :class:`CamResult` at the images' resolution."""
        self._warn_if_1x1(layer_maps, images)
        maps = fuse_layer_maps(list(layer_maps.values()), (images.shape[-2], images.shape[-1]))
        return CamResult(maps=maps, layer_maps=layer_maps, logits=logits.detach(), classes=classes)

    def maps_from_capture(self, activations: dict[str, torch.Tensor],
                          grads: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """Per-layer maps (after ReLU) from one captured pass: the target layers' activations and, for gradient
        methods, the target score's gradients w.r.t. them. Lets :func:`visattn.cam.explain_many` share that pass.

        Raises:
            NotImplementedError: for methods that need more than one pass (Score-CAM).
        """
        raise NotImplementedError(f"{type(self).__name__} needs more than one forward pass")

    def __call__(self, images: torch.Tensor, targets: Targets = None) -> torch.Tensor:
        """``(B, H, W)`` saliency maps in ``[0, 1]``; see :meth:`explain`."""
        return self.explain(images, targets).maps

    def _warn_if_1x1(self, layer_maps: dict[str, torch.Tensor], images: torch.Tensor) -> None:
        flat = [name for name, m in layer_maps.items() if m.shape[-1] * m.shape[-2] == 1]
        if flat and not self._warned_1x1:
            self._warned_1x1 = True
            warnings.warn(f"target layer(s) {flat} give a 1x1 map for {images.shape[-2]}x{images.shape[-1]} inputs: "
                          "the saliency map is constant. Use an earlier layer, larger images, or a small-input stem "
                          "(visattn.use_small_input_stem).", UserWarning, stacklevel=user_stacklevel())

    def _layer_maps(self, images: torch.Tensor, targets: Targets
                    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def __repr__(self) -> str:
        layers = [n for n, _ in self.layers] if self.layers is not None else "auto"
        return f"{type(self).__name__}(target_layers={layers})"


class GradientCAM(BaseCAM):
    """Base for methods that combine a layer's activations ``A`` with the gradients ``dS/dA`` of the target score."""

    def _layer_maps(self, images: torch.Tensor, targets: Targets
                    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        logits, classes, activations, grads = self.capture_with_grads(images, targets)
        return logits, classes, self.maps_from_capture(activations, grads)

    def capture_with_grads(self, images: torch.Tensor, targets: Targets) -> tuple[
            torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """One forward pass and one backward pass from the target score down to the target layers only.

        Returns:
            logits, the explained classes (None for a callable target), and per target layer the activations and
            the gradients of the summed target scores w.r.t. them.
        """
        logits, activations = self.forward_capture(images)
        classes = target_classes(logits.detach(), targets)
        with torch.enable_grad():  # the caller may be inside torch.no_grad()
            # Images are independent in eval mode, so the gradient of the summed scores is each image's own gradient.
            total = target_scores(logits, targets, classes).sum()
        grads = torch.autograd.grad(total, list(activations.values()), allow_unused=True)
        for name, g in zip(activations, grads, strict=True):
            if g is None:
                raise ValueError(f"the target score does not depend on target layer {name!r}")
        return logits, classes, activations, dict(zip(activations, grads, strict=True))

    def maps_from_capture(self, activations: dict[str, torch.Tensor],
                          grads: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        if grads is None:
            raise ValueError(f"{type(self).__name__} needs the target score's gradients")
        maps = {}
        for name, a in activations.items():
            acc = torch.promote_types(a.dtype, torch.float32)  # half-precision models: do the map maths in float32
            maps[name] = self.combine(a.detach().to(acc), grads[name].to(acc)).clamp_min(0)
        return maps

    def combine(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """``(B, h, w)`` map (before ReLU) from activations and gradients, both ``(B, C, h, w)``."""
        raise NotImplementedError
