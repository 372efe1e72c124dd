"""Models: timm ``{arch}_{block}`` registrations, the small-input stem, injection into existing CNNs, loading."""

from . import pretrained as _pretrained  # noqa: F401  (registers the models with shipped weights)
from .inject import Injected, find_sites, inject
from .inject_cross import inject_cross
from .inject_report import InjectionReport, InjectionSite
from .stem import use_small_input_stem
from .variants import ARCHITECTURES, create_attention_resnet, variant_names
from .weights import load_weights, read_state_dict

__all__ = [
    "inject",
    "inject_cross",
    "Injected",
    "InjectionReport",
    "InjectionSite",
    "find_sites",
    "use_small_input_stem",
    "create_attention_resnet",
    "variant_names",
    "ARCHITECTURES",
    "load_weights",
    "read_state_dict",
]
