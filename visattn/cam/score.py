"""Score-CAM (Wang et al. 2020, "Score-CAM: Score-Weighted Visual Explanations for CNNs", arXiv 1910.01279).

Gradient-free: each channel of the target layer, upsampled and scaled to [0, 1], masks the input; the class
probability of the masked image is that channel's weight. Costs one forward pass per channel per image (batched).

Differences:
- Weights are the target class's softmax probability on the masked input, as in the authors' code; the paper's
  Eq. 5 subtracts a baseline score, a constant across channels that the authors' code leaves out as well.
  pytorch-grad-cam instead takes a softmax of the logits across channels, which flattens the weights.
- With a callable target the weight is the callable's score of the masked input.
- Channels whose activation is constant over the image carry no location and get weight 0 (no forward pass).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import BaseCAM
from .layers import LayerSpec
from .targets import Targets, target_classes

__all__ = ["ScoreCAM"]


class ScoreCAM(BaseCAM):
    """Score-CAM; see the module docstring.

    Args:
        model: the classifier.
        target_layers: as :class:`BaseCAM`.
        batch_size: masked images per forward pass.
    """

    name = "scorecam"
    uses_gradients = False

    def __init__(self, model: nn.Module, target_layers: LayerSpec = None, *, batch_size: int = 64,
                 **kwargs: Any) -> None:
        super().__init__(model, target_layers, **kwargs)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = batch_size

    def _layer_maps(self, images: torch.Tensor, targets: Targets
                    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        logits, activations = self.forward_capture(images)
        classes = target_classes(logits, targets)
        maps = {}
        with torch.no_grad():
            for name, acts in activations.items():
                weights = torch.stack([self._channel_weights(images[i], acts[i], targets,
                                                             None if classes is None else int(classes[i]))
                                       for i in range(images.shape[0])])
                acc = torch.promote_types(acts.dtype, torch.float32)
                maps[name] = torch.einsum("bc,bchw->bhw", weights.to(acc), acts.to(acc)).clamp_min(0)
        return logits, classes, maps

    def _channel_weights(self, image: torch.Tensor, acts: torch.Tensor, targets: Targets, cls: int | None
                         ) -> torch.Tensor:
        acc = torch.promote_types(acts.dtype, torch.float32)
        upsampled = F.interpolate(acts[None].to(acc), size=image.shape[-2:], mode="bilinear", align_corners=False)[0]
        flat = upsampled.flatten(1)
        low, high = flat.amin(1), flat.amax(1)
        weights = torch.zeros(acts.shape[0], device=acts.device, dtype=acc)
        informative = (high > low).nonzero().squeeze(1)
        for chunk in informative.split(self.batch_size):
            masks = (upsampled[chunk] - low[chunk, None, None]) / (high - low)[chunk, None, None]
            out = self.model(image[None] * masks[:, None].to(image.dtype))
            if cls is None:
                score = targets(out)  # type: ignore[operator]  # a callable target
            else:
                score = out.to(acc).softmax(1)[:, cls]
            weights[chunk] = score.to(acc)
        return weights
