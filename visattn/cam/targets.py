"""What a saliency map explains: class indices or a callable on the logits, resolved to one score per image."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["Targets", "target_classes", "target_scores"]

# None: the predicted class. int (or a NumPy / 0-d tensor integer): one class for every image. A sequence / 1-D
# tensor: one class per image.
# A callable: maps logits (B, K) to scores (B,); it must score each row on its own (Score-CAM calls it on batches of
# masked images).
Targets = None | int | Sequence[int] | torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


def target_classes(logits: torch.Tensor, targets: Targets) -> torch.Tensor | None:
    """Class index per image, shape ``(B,)`` (long, on the logits' device), or None for a callable target.

    Raises:
        ValueError: a class index outside ``[0, K)`` or a count that does not match the batch.
        TypeError: a target of another kind.
    """
    batch, num_classes = logits.shape
    if targets is None:
        return logits.argmax(dim=1)
    if callable(targets):
        return None
    if isinstance(targets, bool) or isinstance(targets, float):
        raise TypeError(f"targets must be None, an int, a sequence of ints, a tensor or a callable, got {targets!r}")
    if isinstance(targets, int):
        classes = torch.full((batch,), targets, dtype=torch.long, device=logits.device)
    else:
        try:
            classes = torch.as_tensor(targets, device=logits.device)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"targets must be None, an int, a sequence of ints, a tensor or a callable, "
                            f"got {type(targets).__name__}") from err
        if classes.is_floating_point() or classes.is_complex() or classes.dtype == torch.bool:
            raise TypeError(f"targets must hold integer class indices, got dtype {classes.dtype}")
        if classes.ndim == 0:  # np.int64 (what np.argmax returns) or a 0-d tensor: one class for all, like an int
            classes = classes.expand(batch)
        if classes.shape != (batch,):
            raise ValueError(f"targets must give one class per image: expected shape ({batch},), "
                             f"got {tuple(classes.shape)}")
        classes = classes.long()
    bad = (classes < 0) | (classes >= num_classes)
    if bad.any():
        raise ValueError(f"targets must be class indices in [0, {num_classes}), got {classes[bad].tolist()}")
    return classes


def target_scores(logits: torch.Tensor, targets: Targets, classes: torch.Tensor | None = None) -> torch.Tensor:
    """One score per image, shape ``(B,)``: the target class's logit, or what the callable returns.

    The logit, not the softmax probability, as in the Grad-CAM paper (Sec. 3): the probability also depends on every
    other class and its gradient saturates when the model is confident.
    """
    if callable(targets) and not isinstance(targets, torch.Tensor):
        scores = targets(logits)
        if not isinstance(scores, torch.Tensor) or scores.shape != logits.shape[:1]:
            shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(f"a callable target must return one score per image, shape ({logits.shape[0]},), "
                             f"got {shape}")
        return scores
    if classes is None:
        classes = target_classes(logits, targets)
    return logits.gather(1, classes[:, None]).squeeze(1)
