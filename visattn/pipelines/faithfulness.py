"""``visattn evaluate-cams``: score every CAM method of :mod:`visattn.cam` on a trained model's validation images.

The built-in ``shapes`` data carries each image's object mask, so the pointing games run there; for other data sets
they are skipped and the perturbation metrics and the sanity check still run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from torch import nn

from ..cam import create_cam
from ..cam.layers import LayerSpec
from ..faithfulness.perturbation import Explain
from ..faithfulness.report import FaithfulnessReport, evaluate_faithfulness
from .samples import validation_batch
from .trained import TrainedModel

__all__ = ["evaluate_cams"]


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

    Raises:
        ValueError: the model reads a side vector with each image (``data.side``): CAMs feed it images alone.

    Example:
        >>> trained = load_trained("weights/quickstart_resnet18_cbam_shapes.safetensors")
        >>> print(evaluate_cams(trained, ["gradcam", "layercam"], num_images=100).table())  # doctest: +SKIP
    """
    if trained.config.data.side is not None:
        raise ValueError("data.side is set: this model reads a side vector with each image, and CAMs and the "
                         "faithfulness metrics explain image-only models (they feed the model images alone)")
    images, labels, masks = validation_batch(trained.config.data, num_images)
    device = next(trained.model.parameters()).device
    makers = {name: _maker(name, target_layers) for name in methods}
    return evaluate_faithfulness(trained.model, images.to(device), labels.to(device),
                                 masks.to(device) if masks is not None else None, makers, out_dir=out_dir,
                                 sanity=sanity, batch_size=batch_size, tolerance=tolerance, progress=progress)
