"""Where a model comes from: the rules every command and `minilm.load` share.

    None              the default model (SmolLM2-135M-Instruct, offline, converted once)
    path/to/x.gguf    a GGUF file (converted once into the cache; weights=False: config and tokenizer only)
    path/to/folder    a Hugging Face checkpoint folder
    org/name          a hub id, resolved through huggingface_hub's cache (offline once cached)
"""
from __future__ import annotations

import os


def resolve_model_dir(model: str | None, weights: bool = True) -> str:
    """A checkpoint folder for `model` (see the module docstring); FileNotFoundError if there is none.

    weights=False: for a .gguf, its side folder only (config, generation config, tokenizer), for
    callers that run the GGUF's blocks as stored.
    """
    if model is None:
        from .default_model import default_model_dir
        return default_model_dir()
    model = os.path.expanduser(str(model))
    if model.endswith(".gguf"):
        if not os.path.isfile(model):
            raise FileNotFoundError(f"model file {model!r} does not exist")
        from .default_model import converted_gguf_dir
        return converted_gguf_dir(model, weights=weights)
    return resolve_model_path(model)


def resolve_model_path(path_or_repo_id: str) -> str:
    """A local folder, or a hub id resolved through huggingface_hub's cache (offline once cached)."""
    if os.path.isdir(path_or_repo_id):
        return path_or_repo_id
    if os.path.exists(path_or_repo_id):
        raise FileNotFoundError(f"model path {path_or_repo_id!r} is a file, not a checkpoint folder "
                                "(pass the folder that holds config.json, or a .gguf file)")
    looks_like_repo = path_or_repo_id.count("/") == 1 and not path_or_repo_id.startswith((".", "/", "~"))
    if not looks_like_repo:
        raise FileNotFoundError(f"model path {path_or_repo_id!r} does not exist")
    from huggingface_hub import snapshot_download
    patterns = ["*.json", "*.safetensors", "*.jinja", "tokenizer*"]
    try:
        return snapshot_download(path_or_repo_id, allow_patterns=patterns, local_files_only=True)
    except Exception:
        pass
    try:
        return snapshot_download(path_or_repo_id, allow_patterns=patterns)
    except Exception as e:
        raise FileNotFoundError(f"model {path_or_repo_id!r} is neither a local folder nor in the Hugging Face "
                                f"cache, and could not be downloaded ({type(e).__name__})") from None
