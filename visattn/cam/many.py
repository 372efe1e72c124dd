"""Several CAM methods on one batch, sharing one forward and one backward pass among those that can.

The Grad-CAM family needs the target layers' activations and the gradients of the target score w.r.t. them, and
Eigen-CAM only the activations: for one model, one set of target layers and one target, that is the same pass for all
of them. Score-CAM masks the input channel by channel and runs on its own.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .base import BaseCAM, CamResult, GradientCAM
from .targets import Targets, target_classes

__all__ = ["explain_many"]


def _shares_pass(cam: BaseCAM) -> bool:
    return type(cam).maps_from_capture is not BaseCAM.maps_from_capture


def explain_many(cams: Mapping[str, BaseCAM], images: torch.Tensor, targets: Targets = None) -> dict[str, CamResult]:
    """``{name: cam.explain(images, targets)}``, with one captured pass shared by every CAM that can share it.

    CAMs share the pass when they explain the same model at the same target layers (the same ``target_layers``
    argument, or the same resolved layers); the others run their own :meth:`~BaseCAM.explain`. Results equal each
    CAM's own ``explain`` (tested), and the model's state is restored as by ``explain``.

    Example:
        >>> cams = {m: create_cam(m, model, "layer3") for m in ("gradcam", "gradcam++", "eigencam")}
        >>> results = explain_many(cams, images)   # one forward pass, one backward pass
    """
    shareable = [c for c in cams.values() if _shares_pass(c)]
    lead = next((c for c in shareable if isinstance(c, GradientCAM)), shareable[0] if shareable else None)
    shared = {name: cam for name, cam in cams.items() if lead is not None and _shares_pass(cam)
              and cam.model is lead.model and _same_layers(cam, lead)}
    results: dict[str, CamResult] = {}

    def compute(x: torch.Tensor) -> None:
        assert lead is not None
        if isinstance(lead, GradientCAM):
            logits, classes, activations, grads = lead.capture_with_grads(x, targets)
        else:
            logits, activations = lead.forward_capture(x)
            classes, grads = target_classes(logits, targets), None
        for name, cam in shared.items():
            cam.layers = lead.layers  # the same layers (checked above): a CAM not yet resolved skips its own probe
            results[name] = cam.result(x, logits, classes, cam.maps_from_capture(activations, grads))

    if lead is not None:
        lead.run(images, compute)
    for name, cam in cams.items():
        if name not in shared:
            results[name] = cam.explain(images, targets)
    return {name: results[name] for name in cams}


def _same_layers(cam: BaseCAM, lead: BaseCAM) -> bool:
    if cam.layers is not None and lead.layers is not None:
        return [m for _, m in cam.layers] == [m for _, m in lead.layers]
    return cam.layer_spec == lead.layer_spec
