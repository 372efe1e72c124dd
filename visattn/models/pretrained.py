"""timm models whose pretrained weights ship in this repository's ``weights/`` folder (no download).

``timm.create_model('resnet18_cbam_quickstart', pretrained=True)`` builds the quickstart architecture and loads
``weights/quickstart_resnet18_cbam_shapes.safetensors`` through timm's own ``pretrained_cfg['file']`` mechanism.
The folder sits next to the package in a source checkout (``pip install -e .``); elsewhere, pass the file yourself:
``pretrained_cfg_overlay=dict(file='path/to/file.safetensors')``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from timm.models import FeatureListNet, generate_default_cfgs, load_pretrained, register_model
from timm.models.resnet import ResNet

from .stem import use_small_input_stem
from .variants import create_attention_resnet, resnet_cfg

__all__ = ["WEIGHTS_DIR", "QUICKSTART_ARGS"]

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"

# configs/quickstart.yaml's model section, as constructor arguments.
QUICKSTART_ARGS: dict[str, Any] = dict(layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), stem_width=16,
                                       zero_init_last=False, num_classes=10)

default_cfgs = generate_default_cfgs({
    "resnet18_cbam_quickstart.shapes": resnet_cfg(
        file=str(WEIGHTS_DIR / "quickstart_resnet18_cbam_shapes.safetensors"), num_classes=10,
        input_size=(3, 32, 32), pool_size=(2, 2), crop_pct=1.0, license="apache-2.0",
        notes=("visattn quickstart: built-in shapes data, 96.3 % val; see weights/README.md",)),
})


@register_model
def resnet18_cbam_quickstart(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """The quickstart's small ResNet-18 + CBAM (one block per stage, quarter width, stride-2 3x3 stem), 10 classes."""
    kwargs.pop("cache_dir", None)
    # Its stem is part of the architecture (the weights have its conv): refuse other stems instead of stacking two.
    if not kwargs.pop("small_input", True) or kwargs.pop("small_input_stride", 2) != 2:
        raise ValueError("resnet18_cbam_quickstart always has its small-input stem of stride 2; leave small_input and "
                         "small_input_stride unset")
    # features_only: build the classifier, load its weights, then wrap it as timm does, so the weights (which hold
    # the classifier) load first and the stem is the checkpoint's.
    features_only = kwargs.pop("features_only", False)
    feature_kwargs = {k: kwargs.pop(k) for k in ("out_indices", "feature_cls") if k in kwargs}
    model = create_attention_resnet("resnet18", "cbam", variant="resnet18_cbam_quickstart",
                                    **{**QUICKSTART_ARGS, **kwargs})
    use_small_input_stem(model, stride=2)  # before loading: the checkpoint has the small stem's conv
    if pretrained:
        file = Path(model.pretrained_cfg["file"])
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing (the weights/ folder ships with the source tree); pass "
                                    "pretrained_cfg_overlay=dict(file=...) pointing at a copy")
        load_pretrained(model, num_classes=model.num_classes, in_chans=kwargs.get("in_chans", 3))
    if features_only:
        features = FeatureListNet(model, out_indices=feature_kwargs.get("out_indices", (0, 1, 2, 3, 4)))
        features.pretrained_cfg = features.default_cfg = model.pretrained_cfg  # as timm's builder sets them
        return features
    return model
