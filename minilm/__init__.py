"""minilm: a from-scratch, readable LLM inference engine for llama, cohere and cohere2."""
from .config import ConfigError, ModelConfig, load_config
from .loading import load
from .weights import WeightsError

__all__ = ["load", "load_config", "ModelConfig", "ConfigError", "WeightsError"]
__version__ = "0.1.0"
