"""minilm.load: folder or hub id -> config + validated weights -> a model on a backend."""
from __future__ import annotations

import os

from .backends import get_backend
from .config import ModelConfig, load_config
from .models import MODEL_CLASSES
from .progress import ProgressBar
from .weights import WeightsError, read_checkpoint, resolve_model_path


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple]:
    """Every tensor name the checkpoint must hold, with its shape (HF names, PyTorch layout)."""
    D, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    H, KV, HD = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}"
        shapes.update({
            f"{p}.input_layernorm.weight": (D,),
            f"{p}.self_attn.q_proj.weight": (H * HD, D), f"{p}.self_attn.k_proj.weight": (KV * HD, D),
            f"{p}.self_attn.v_proj.weight": (KV * HD, D), f"{p}.self_attn.o_proj.weight": (D, H * HD),
            f"{p}.mlp.gate_proj.weight": (F, D), f"{p}.mlp.up_proj.weight": (F, D),
            f"{p}.mlp.down_proj.weight": (D, F),
        })
        if cfg.model_type == "llama":
            shapes[f"{p}.post_attention_layernorm.weight"] = (D,)
        if cfg.attention_bias:
            shapes.update({f"{p}.self_attn.q_proj.bias": (H * HD,), f"{p}.self_attn.k_proj.bias": (KV * HD,),
                           f"{p}.self_attn.v_proj.bias": (KV * HD,), f"{p}.self_attn.o_proj.bias": (D,)})
        if cfg.mlp_bias:
            shapes.update({f"{p}.mlp.gate_proj.bias": (F,), f"{p}.mlp.up_proj.bias": (F,),
                           f"{p}.mlp.down_proj.bias": (D,)})
        if cfg.use_qk_norm:
            shapes.update({f"{p}.self_attn.q_norm.weight": (H, HD), f"{p}.self_attn.k_norm.weight": (KV, HD)})
    if cfg.is_sequence_classifier:
        shapes["score.weight"] = (cfg.num_labels, D)
    else:
        shapes["lm_head.weight"] = (V, D)
    return shapes


def validate_weights(cfg: ModelConfig, tensors: dict, folder: str) -> dict:
    """Check names and shapes of {name: array-like}; returns the tensors the model uses, in order."""
    expected = expected_shapes(cfg)
    tensors = dict(tensors)
    if "lm_head.weight" in expected and "lm_head.weight" not in tensors and cfg.tie_word_embeddings:
        tensors["lm_head.weight"] = tensors.get("model.embed_tokens.weight")  # tied: the same matrix
        if tensors["lm_head.weight"] is None:
            del tensors["lm_head.weight"]
    for name, shape in expected.items():
        if name not in tensors:
            raise WeightsError(f"{folder}: missing tensor {name!r} (expected shape {list(shape)})")
        if tuple(tensors[name].shape) != shape:
            raise WeightsError(f"{folder}: tensor {name!r} has shape {list(tensors[name].shape)}, "
                               f"expected {list(shape)} from config.json")
    unexpected = [n for n in tensors if n not in expected and not n.endswith("rotary_emb.inv_freq")]
    if unexpected:
        raise WeightsError(f"{folder}: unexpected tensor {unexpected[0]!r}"
                           + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    return {n: tensors[n] for n in expected}


def load(path_or_repo_id: str, backend: str = "numba", weight_dtype: str = "float32", progress: bool = True,
         **backend_options):
    """Load a llama / cohere / cohere2 checkpoint (folder or hub id) onto a backend.

    backend: "numba" (fast CPU, default), "numpy" (the steppable reference), "cuda", "cuda-emulated".
    weight_dtype: "float32", or "bfloat16" storage (backends that support it) with float32 accumulation.
    """
    folder = resolve_model_path(os.path.expanduser(str(path_or_repo_id)))
    cfg = load_config(folder)
    ops = get_backend(backend, **backend_options)
    stored = read_checkpoint(folder)                               # located, nothing read yet
    views = validate_weights(cfg, stored, folder)
    weights = {}
    with ProgressBar(len(views), desc="loading weights", enabled=progress) as bar:
        for name in views:
            if name == "lm_head.weight" and cfg.tie_word_embeddings:
                bar.update(1, name)
                continue                                            # tied: filled in below
            array = stored[name].read_float32()                    # one tensor at a time bounds peak memory
            if array.ndim == 2 and "norm" not in name:
                weights[name] = ops.prepare_weight(array, weight_dtype)   # matrices: backend storage format
            else:
                weights[name] = ops.asarray(array)
            del array
            bar.update(1, name)
    if "lm_head.weight" in views and cfg.tie_word_embeddings:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]  # tied: one matrix in memory
    model = MODEL_CLASSES[cfg.model_type](cfg, weights, ops)
    model.path = folder
    model.weight_dtype = weight_dtype
    return model
