"""minilm.load: folder or hub id -> config + validated weights -> a model on a backend.

Which tensors exist, with which shapes, and which of them are matrices comes
from the family (`FamilyClass.tensor_specs(config)`); each matrix becomes a
`formats.Weight` in the storage format asked for, one tensor at a time, and
the backend prepares it (or refuses its format by name).
"""
from __future__ import annotations

import json
import os

from .backends import get_backend
from .config import ModelConfig, load_config
from .errors import WeightsError
from .formats import Weight, quantize as encode
from .models import FAMILIES, MATRIX_KINDS, TensorSpec
from .progress import progress_bar
from .resolve import resolve_model_path
from .safetensors_file import StoredTensor
from .weights import check_finite, read_checkpoint, to_float32

FLOAT_FORMATS = ("float32", "bfloat16", "float16")
STORED_FORMAT = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}   # safetensors dtype -> Weight format


def validate_weights(cfg: ModelConfig, specs: dict[str, TensorSpec], tensors: dict, folder: str) -> dict:
    """Check names and shapes of {name: StoredTensor}; returns the tensors the model uses, in order."""
    tensors = dict(tensors)
    if "lm_head.weight" in specs and "lm_head.weight" not in tensors and cfg.tie_word_embeddings:
        if "model.embed_tokens.weight" in tensors:
            tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]   # tied: the same matrix
    for name, spec in specs.items():
        if name not in tensors:
            raise WeightsError(f"{folder}: missing tensor {name!r} (expected shape {list(spec.shape)})")
        if tuple(tensors[name].shape) != spec.shape:
            raise WeightsError(f"{folder}: tensor {name!r} has shape {list(tensors[name].shape)}, "
                               f"expected {list(spec.shape)} from config.json")
        if tensors[name].dtype not in STORED_FORMAT:
            raise WeightsError(f"{tensors[name].path}: tensor {name!r} has dtype {tensors[name].dtype}; "
                               f"weights must be {', '.join(STORED_FORMAT)}")
    unexpected = [n for n in tensors if n not in specs and not n.endswith("rotary_emb.inv_freq")]
    if unexpected:
        raise WeightsError(f"{folder}: unexpected tensor {unexpected[0]!r}"
                           + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    return {n: tensors[n] for n in specs}


def stored_weight(stored: StoredTensor, format: str, mode: str) -> Weight:
    """One matrix read from the checkpoint into `format`: kept as stored when it already is, else
    widened to float32 and encoded (a quantized format quantizes here, one tensor at a time)."""
    values = stored.read()
    if STORED_FORMAT[stored.dtype] == format:
        check_finite(stored, values)
        return Weight(format, values.shape, {"data": values}, mode)
    return encode(to_float32(stored, values), format, mode)


def load(path_or_repo_id: str, backend: str = "numba", weight_dtype: str = "float32", quantize: str | None = None,
         mode: str = "exact", progress: bool = True, **backend_options):
    """Load a checkpoint (folder or hub id) of any registered family onto a backend.

    backend: "numba" (fast CPU, default), "numpy" (the steppable reference), "cuda", "cuda-emulated".
    weight_dtype: storage of the matrices: "float32", "bfloat16" or "float16" (float32 arithmetic).
    quantize: a format of minilm.formats (e.g. "q4_1", "int4", "nf4") for the decoder's linear layers;
        the embedding and the head stay in weight_dtype, as bitsandbytes and torchao leave them.
    mode: "exact" (decoded weights, float32 products) or "fast" (int8 activations) for quantized formats.
    """
    if weight_dtype not in FLOAT_FORMATS:
        raise ValueError(f"weight_dtype={weight_dtype!r} must be one of {', '.join(FLOAT_FORMATS)} "
                         "(quantized formats: quantize=...)")
    folder = resolve_model_path(os.path.expanduser(str(path_or_repo_id)))
    cfg = load_config(folder)
    generation_config = load_generation_config(folder)      # read before the weights: a bad file fails fast
    family = FAMILIES[cfg.model_type]
    ops = get_backend(backend, **backend_options)
    specs = family.tensor_specs(cfg)
    stored = validate_weights(cfg, specs, read_checkpoint(folder), folder)    # located, nothing read yet
    tied = cfg.tie_word_embeddings and "lm_head.weight" in specs
    weights = {}
    with progress_bar(len(stored), "loading weights", enabled=progress) as bar:
        for name, tensor in stored.items():
            kind = specs[name].kind
            if name == "lm_head.weight" and tied:
                weights[name] = weights["model.embed_tokens.weight"]            # tied: one matrix in memory
            elif kind in MATRIX_KINDS:
                format = quantize if (kind == "linear" and quantize) else weight_dtype
                weights[name] = ops.prepare_weight(stored_weight(tensor, format, mode))
            else:
                weights[name] = ops.asarray(to_float32(tensor, tensor.read()))
            bar.update(1)
            bar.set_postfix_str(name, refresh=False)
    model = family(cfg, weights, ops)
    model.path = folder
    model.generation_config = generation_config
    return model


def load_generation_config(folder: str) -> dict:
    """The checkpoint's generation_config.json as a dict ({} when it has none).

    Like transformers' `model.generation_config`: `generate` and the CLI take their sampling
    defaults (do_sample, temperature, top_p, ...) and eos/pad ids from it when not given.
    """
    path = os.path.join(folder, "generation_config.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(values).__name__}")
    return values
