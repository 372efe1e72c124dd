"""Configuration: the training config's sections, and typed YAML loading for any dataclass schema.

It sits below data and training, which both read it: ``schema.py`` validates plain data against nested dataclasses,
``loader.py`` reads YAML (``extends``, ``key=value`` overrides) and writes it back, ``sections.py`` is the training
config (data, model, optim, loop, eval, checkpoint).
"""

from .loader import (
    ConfigError,
    closest_key,
    config_from_dict,
    config_to_dict,
    format_override,
    load_config,
    merge_overrides,
    parse_overrides,
    read_yaml,
    save_config,
)
from .sections import (
    AttnConfig,
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    FusionConfig,
    LoopConfig,
    ModelConfig,
    OptimConfig,
    SideConfig,
    TrainConfig,
    load_train_config,
)

__all__ = [
    "ConfigError",
    "closest_key",
    "config_from_dict",
    "config_to_dict",
    "format_override",
    "load_config",
    "merge_overrides",
    "parse_overrides",
    "read_yaml",
    "save_config",
    "CheckpointConfig",
    "DataConfig",
    "EvalConfig",
    "FusionConfig",
    "AttnConfig",
    "LoopConfig",
    "ModelConfig",
    "OptimConfig",
    "SideConfig",
    "TrainConfig",
    "load_train_config",
]
