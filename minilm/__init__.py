"""minilm: a from-scratch, readable LLM inference engine for llama, cohere and cohere2."""
from . import errors
from .config import ModelConfig, load_config, parse_config
from .errors import ConfigError, UnsupportedFormatError, WeightsError
from .loading import load

__all__ = ["load", "load_config", "parse_config", "ModelConfig", "ConfigError", "WeightsError",
           "UnsupportedFormatError", "errors"]
__version__ = "0.1.0"
