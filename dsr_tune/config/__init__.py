"""Run configuration: one pydantic section per concern, validated on construction.

A config is loaded from YAML, overridden with dotted keys from the command line
(``sparsity.sparsity=0.9``, ``sparsity.dsr.delta=0.2``) and written out
resolved beside every run. Any bad key or value raises :class:`ConfigError`
naming the key, the value and what is allowed, before any work starts.
"""

from ..schema import ConfigError
from .load import (apply_overrides, check, check_paths, describe, dump, follows_epochs, from_dict, load,
                   moved_key, parse_override, read_yaml, replace, set_dotted)
from .sections import SECTIONS, Config, DataConfig, ModelConfig, OptimConfig, SparsityConfig, TrainConfig

__all__ = ["SECTIONS", "Config", "ConfigError", "DataConfig", "ModelConfig", "OptimConfig", "SparsityConfig",
           "TrainConfig", "apply_overrides", "check", "check_paths", "describe", "dump", "follows_epochs",
           "from_dict", "load", "moved_key", "parse_override", "read_yaml", "replace", "set_dotted"]
