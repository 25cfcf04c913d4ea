"""minilm: a from-scratch, readable LLM inference engine for llama, cohere and cohere2.

    import minilm
    model = minilm.load()                                   # the default model (SmolLM2-135M-Instruct), offline
    print(minilm.generate_text(model, "What is the capital of France?"))
    for piece in minilm.stream(model, "Tell me a joke."):
        print(piece, end="", flush=True)
"""
from . import errors
from .config import ModelConfig, load_config, parse_config
from .errors import ConfigError, UnsupportedFormatError, WeightsError
from .loading import load
from .text import generate_text, stream, tokenizer_for

__all__ = ["load", "generate_text", "stream", "tokenizer_for", "load_config", "parse_config", "ModelConfig",
           "ConfigError", "WeightsError", "UnsupportedFormatError", "errors"]
__version__ = "0.1.0"
