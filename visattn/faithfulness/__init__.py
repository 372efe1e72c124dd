"""Faithfulness metrics for saliency maps: deletion/insertion, ROAD, pointing games, and the randomisation sanity check.

Every metric takes saliency maps as ``(B, H, W)`` tensors or an ``explain(images, classes)`` callable, so it works with
any method (``visattn.cam`` or anything else). :func:`evaluate_faithfulness` runs them all and writes a report.

Example:
    >>> from visattn.faithfulness import evaluate_faithfulness
    >>> report = evaluate_faithfulness(model, images, labels, masks, {"gradcam": lambda m: GradCAM(m)},
    ...                                out_dir="runs/faithfulness")
    >>> print(report.table())
"""

from .perturbation import Explain, PerturbationResult, deletion, gaussian_blur, insertion
from .pointing import PointingResult, pointing_game
from .report import FaithfulnessReport, MethodScores, evaluate_faithfulness
from .road import RoadResult, imputation_residual, linear_imputation, noisy_linear_imputation, road
from .sanity import SanityResult, cascading_randomization, default_sanity_layers, spearman

__all__ = [
    "Explain",
    "evaluate_faithfulness",
    "FaithfulnessReport",
    "MethodScores",
    "deletion",
    "insertion",
    "PerturbationResult",
    "gaussian_blur",
    "road",
    "RoadResult",
    "linear_imputation",
    "noisy_linear_imputation",
    "imputation_residual",
    "pointing_game",
    "PointingResult",
    "cascading_randomization",
    "SanityResult",
    "default_sanity_layers",
    "spearman",
]
