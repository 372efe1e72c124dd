"""``visattn evaluate-cams``: score every CAM method of :mod:`visattn.cam` on a trained model's validation images.

The built-in ``shapes`` data carries each image's object mask, so the pointing games run there; for other data sets
they are skipped and the perturbation metrics and the sanity check still run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..cam import create_cam
from ..cam.layers import LayerSpec
from ..data.datasets import build_datasets
from ..data.synthetic import ShapesDataset
from ..training.trained import TrainedModel
from .perturbation import Explain
from .report import FaithfulnessReport, evaluate_faithfulness

__all__ = ["evaluate_cams", "validation_batch"]


def validation_batch(trained: TrainedModel, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The first ``count`` validation images (eval transform), their labels, and object masks where the data has them.

    Raises:
        ValueError: ``count`` is not a positive int.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"num_images must be a positive int, got {count!r}")
    val = build_datasets(trained.config.data).val
    count = min(count, len(val))
    if isinstance(val, ShapesDataset):
        samples = [val.get_with_mask(i) for i in range(count)]
        images = torch.stack([s[0] for s in samples])
        masks = torch.stack([torch.as_tensor(s[1]) for s in samples]).bool()
        labels = torch.tensor([s[2] for s in samples])
        return images, labels, masks
    pairs = [val[i] for i in range(count)]
    keep = [p for p in pairs if p is not None]  # unreadable files come back as None
    return torch.stack([p[0] for p in keep]), torch.tensor([p[1] for p in keep]), None


def _maker(method: str, target_layers: LayerSpec) -> Callable[[nn.Module], Explain]:
    def make_explain(model: nn.Module) -> Explain:
        cam = create_cam(method, model, target_layers)
        return lambda images, classes: cam(images, classes)
    return make_explain


def evaluate_cams(
        trained: TrainedModel,
        methods: Sequence[str],
        *,
        num_images: int = 200,
        target_layers: LayerSpec = None,
        out_dir: str | Path | None = None,
        sanity: bool = True,
        batch_size: int = 64,
        tolerance: float | Sequence[float] = 0.0,
        progress: bool = False,
) -> FaithfulnessReport:
    """Deletion/insertion AUC, ROAD, pointing games and the randomisation sanity check for each CAM method.

    Each map explains the image's true class. See :func:`visattn.faithfulness.evaluate_faithfulness`.

    Example:
        >>> trained = load_trained("weights/quickstart_resnet18_cbam_shapes.safetensors")
        >>> print(evaluate_cams(trained, ["gradcam", "layercam"], num_images=100).table())  # doctest: +SKIP
    """
    images, labels, masks = validation_batch(trained, num_images)
    device = next(trained.model.parameters()).device
    makers = {name: _maker(name, target_layers) for name in methods}
    return evaluate_faithfulness(trained.model, images.to(device), labels.to(device),
                                 masks.to(device) if masks is not None else None, makers, out_dir=out_dir,
                                 sanity=sanity, batch_size=batch_size, tolerance=tolerance, progress=progress)
