"""torchao checkpoints: what transformers' `save_pretrained` writes (safetensors) for a model quantized
with `TorchAoConfig(Int4WeightOnlyConfig(group_size))` or `TorchAoConfig(Int8WeightOnlyConfig())`,
read with the codes used in place (memory-mapped).

config.json says quantization_config = {"quant_method": "torchao", "quant_type": {"default":
{"_type": "Int4WeightOnlyConfig", ...}}, ...}. torchao flattens each quantized weight MODULE.weight
into plain tensors named MODULE._weight_<part>, and the file header's __metadata__ holds, under the
name MODULE.weight, a JSON description of the tensor subclass (its type, attributes and parts):

  Int4Tensor (Int4WeightOnlyConfig, "plain" packing, torchao's default)
    {"_type": "Int4Tensor", "_data": {"block_size": [1, G], "shape": [OUT, IN], "activation_dtype": bf16},
     "_tensor_data_names": ["qdata", "scale", "zero_point"]}
    MODULE._weight_qdata       I8   [OUT, IN/2]   two signed nibbles per byte, element 2i low: minilm's int4 codes
    MODULE._weight_scale       BF16 [IN/G, OUT]   transposed: OUT is the fast axis
    MODULE._weight_zero_point  BF16 [IN/G, OUT]   w = q * scale + zero

  Int8Tensor (Int8WeightOnlyConfig, one scale per row)
    {"_type": "Int8Tensor", "_data": {"block_size": [1, IN], "act_quant_kwargs": null, ...}, ...}
    MODULE._weight_qdata       I8   [OUT, IN]     minilm's int8 codes
    MODULE._weight_scale       F32  [OUT, 1]      w = qdata * scale
    MODULE._weight_zero_point  I8   [OUT, 1]      all zero (symmetric)

Every array is used as stored: the int4 scale and zero are read through their transpose (a
Fortran-ordered [OUT, IN/G] view that the kernels index like any other; 10-20% slower per int4
GEMV than row-major, since a row's scales are a stride of OUT * 2 bytes apart). mmap=False copies
them row-major instead. Weights left in float (the embedding, usually the head, layers torchao
skipped) are plain tensors; a quantized head loads like a linear layer. Anything else torchao
writes (other packings, float8, activation quantization) is refused by name. The metadata is
JSON; nothing is unpickled.
"""
from __future__ import annotations

import json

import numpy as np

from .errors import ConfigError, WeightsError
from .formats import Weight
from .formats.torchao import INT4_GROUP_SIZES
from .safetensors_file import StoredTensor
from .weights import mapped_checked, read_checked, to_float32

SUPPORTED = {"Int4Tensor": "int4", "Int8Tensor": "int8"}
CONFIG_TYPES = {"Int4WeightOnlyConfig": "int4", "Int8WeightOnlyConfig": "int8"}
PARTS = ("qdata", "scale", "zero_point")


def torchao_formats(qc: dict, source: str) -> str:
    """The minilm formats a torchao quantization_config names ("int4", "int8"); other configs are refused."""
    quant_type = qc.get("quant_type")
    configs = quant_type.values() if isinstance(quant_type, dict) else []
    names = [c.get("_type") for c in configs if isinstance(c, dict)]
    if not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{source}: torchao quantization_config.quant_type={quant_type!r} is not a config "
                          "object (a checkpoint saved by an older transformers as pickle cannot be read)")
    unknown = [n for n in names if n not in CONFIG_TYPES]
    if unknown:
        raise ConfigError(f"{source}: torchao {unknown[0]} is not supported (minilm reads "
                          f"{' and '.join(CONFIG_TYPES)} checkpoints)")
    return ", ".join(sorted({CONFIG_TYPES[n] for n in names}))


def torchao_weights(tensors: dict[str, StoredTensor], specs: dict, metadata: dict, mmap: bool):
    """Split off the quantized linear layers -> ({name: Weight}, the other tensors)."""
    rest, weights = dict(tensors), {}
    for name, spec in specs.items():
        module, attribute = name.rsplit(".", 1)
        prefix = f"{module}._{attribute}_"
        parts = {n[len(prefix):]: rest.pop(n) for n in [n for n in rest if n.startswith(prefix)]}
        if not parts:
            continue                                        # a plain tensor: torchao left it in float
        where = f"{next(iter(parts.values())).path}: tensor {name!r}"
        if spec.kind not in ("linear", "head"):             # an nn.Linear in transformers: projections, lm_head
            raise WeightsError(f"{where} is torchao-quantized, but minilm reads quantized linear layers and "
                               "heads only (not the embedding)")
        description = tensor_description(metadata, name, where)
        weights[name] = torchao_weight(description, parts, spec.shape, mmap, where)
    return weights, rest


def tensor_description(metadata: dict, name: str, where: str) -> dict:
    """The JSON object torchao wrote for one flattened tensor."""
    text = metadata.get(name)
    if text is None:
        raise WeightsError(f"{where}: torchao parts without their description in the file's __metadata__")
    try:
        description = json.loads(text)
    except (ValueError, RecursionError) as e:                  # RecursionError: absurdly deep nesting
        raise WeightsError(f"{where}: its torchao description is not JSON ({type(e).__name__})") from None
    if not isinstance(description, dict) or not isinstance(description.get("_data"), dict) \
            or not isinstance(description.get("_type"), str):
        raise WeightsError(f"{where}: its torchao description is not an object with _type and _data")
    return description


def torchao_weight(description: dict, parts: dict[str, StoredTensor], shape: tuple, mmap: bool,
                   where: str) -> Weight:
    """One layer's flattened tensor subclass -> Weight("int4" or "int8", [OUT, IN]), arrays in place."""
    kind, data = description.get("_type"), description["_data"]
    if kind not in SUPPORTED:
        raise WeightsError(f"{where} is a torchao {kind}; minilm reads Int4Tensor (Int4WeightOnlyConfig, "
                           "plain packing) and Int8Tensor (Int8WeightOnlyConfig)")
    names = description.get("_tensor_data_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise WeightsError(f"{where}: its torchao description's _tensor_data_names is not a list of names")
    extra = sorted(set(parts) - set(PARTS)) or sorted(set(names) - set(PARTS))
    if extra:
        raise WeightsError(f"{where}: torchao part {extra[0]!r} (activation scaling or quantization) is not "
                           "supported; minilm reads weight-only checkpoints")
    missing = [p for p in PARTS[:2] if p not in parts]
    if missing:
        raise WeightsError(f"{where}: torchao part {missing[0]!r} is missing")
    if data.get("act_quant_kwargs") is not None:
        raise WeightsError(f"{where}: int8 with dynamic activation quantization is not supported; "
                           "minilm reads Int8WeightOnlyConfig checkpoints")
    dtype = data.get("activation_dtype", {"_data": "bfloat16"})
    if kind == "Int4Tensor" and (not isinstance(dtype, dict) or dtype.get("_data") != "bfloat16"):
        raise WeightsError(f"{where}: int4 with activation_dtype={dtype!r} is not supported (only bfloat16)")
    if kind == "Int4Tensor":
        return int4_weight(data, parts, shape, mmap, where)
    return int8_weight(data, parts, shape, mmap, where)


def int4_weight(data: dict, parts: dict, shape: tuple, mmap: bool, where: str) -> Weight:
    out_features, in_features = shape
    block = data.get("block_size")
    group = block[1] if isinstance(block, list) and len(block) == 2 and block[0] == 1 else None
    if group not in INT4_GROUP_SIZES or in_features % group:
        raise WeightsError(f"{where}: int4 block_size={block!r}; minilm needs [1, G] with G in "
                           f"{INT4_GROUP_SIZES} dividing the row length {in_features}")
    check_shape(data, shape, where)
    if "zero_point" not in parts:
        raise WeightsError(f"{where}: torchao part 'zero_point' is missing")
    groups = in_features // group
    codes = expect(parts["qdata"], ("I8", "U8"), (out_features, in_features // 2), where)
    scale = expect(parts["scale"], ("BF16",), (groups, out_features), where)
    zero = expect(parts["zero_point"], ("BF16",), (groups, out_features), where)
    if mmap:                                      # [OUT, G] views of the stored [G, OUT]: shared, not copied
        arrays = {"codes": codes.map().view(np.uint8), "scale": mapped_checked(scale).T,
                  "zero": mapped_checked(zero).T}
    else:                                         # copies, transposed to [OUT, G] row-major (the faster kernel)
        arrays = {"codes": read_checked(codes).view(np.uint8), "scale": np.ascontiguousarray(read_checked(scale).T),
                  "zero": np.ascontiguousarray(read_checked(zero).T)}
    return Weight("int4", shape, arrays, options={"group_size": group})


def int8_weight(data: dict, parts: dict, shape: tuple, mmap: bool, where: str) -> Weight:
    out_features, in_features = shape
    if data.get("block_size") != [1, in_features]:
        raise WeightsError(f"{where}: int8 block_size={data.get('block_size')!r}; minilm's int8 has one "
                           f"scale per row, block_size [1, {in_features}]")
    check_shape(data, shape, where)
    codes = expect(parts["qdata"], ("I8",), (out_features, in_features), where)
    scale = expect(parts["scale"], ("F32", "BF16", "F16"), (out_features, 1), where)
    if "zero_point" in parts:
        zero = expect(parts["zero_point"], ("I8",), (out_features, 1), where)
        if zero.read().any():
            raise WeightsError(f"{where}: int8 with a nonzero zero_point is not supported (minilm's int8 is symmetric)")
    values = (mapped_checked(scale) if mmap else read_checked(scale)) if scale.dtype == "F32" else widened(scale)
    codes = codes.map() if mmap else codes.read()
    return Weight("int8", shape, {"codes": codes, "scale": values.reshape(out_features)})


def check_shape(data: dict, shape: tuple, where: str) -> None:
    if "shape" in data and data["shape"] != list(shape):
        raise WeightsError(f"{where}: its torchao description says shape {data['shape']!r}, expected {list(shape)}")


def expect(stored: StoredTensor, dtypes: tuple, shape: tuple, where: str) -> StoredTensor:
    if stored.dtype not in dtypes or stored.shape != shape:
        raise WeightsError(f"{where}: {stored.name} is {stored.dtype}{list(stored.shape)}, expected "
                           f"{' or '.join(dtypes)}{list(shape)}")
    return stored


def widened(stored: StoredTensor) -> np.ndarray:
    """A bf16/f16 per-row scale as float32 (a copy of OUT numbers)."""
    return to_float32(stored, stored.read())


# --- writing (random checkpoints for benchmarks and tests) --------------------------------------------

def quantization_config(fmt: str, group_size: int = 128) -> dict:
    """config.json's quantization_config, as transformers writes it for TorchAoConfig(...)."""
    if fmt == "int4":
        quant = {"_type": "Int4WeightOnlyConfig", "_version": 2,
                 "_data": {"group_size": group_size, "set_inductor_config": True,
                           "int4_packing_format": {"_type": "Int4PackingFormat", "_data": "PLAIN"},
                           "int4_choose_qparams_algorithm": {"_type": "Int4ChooseQParamsAlgorithm",
                                                             "_data": "TINYGEMM"},
                           "int4_tile_packed_ntile": 8}}
    else:
        quant = {"_type": "Int8WeightOnlyConfig", "_version": 2,
                 "_data": {"group_size": None, "set_inductor_config": True,
                           "granularity": {"_type": "PerRow", "_version": 1, "_data": {"dim": -1}}}}
    return {"quant_method": "torchao", "quant_type": {"default": quant}, "modules_to_not_convert": None,
            "include_input_output_embeddings": False, "untie_embedding_weights": False}


def model_group_size(row_lengths) -> int:
    """The one int4 group the writer uses for a whole model: torchao's default 128 where every row
    length allows it (every real config), else 32 (tiny test models: several groups per row)."""
    lengths = sorted(set(int(n) for n in row_lengths))
    for group in (128, 32):
        if all(n % group == 0 for n in lengths):
            return group
    raise ValueError(f"int4 needs linear layers whose row lengths are multiples of 32; got {lengths}")


def flattened_specs(name: str, shape: tuple, fmt: str, group_size: int = 128) -> dict:
    """{tensor name: (safetensors dtype, shape)} of one quantized weight, as torchao flattens it."""
    out_features, in_features = shape
    module, attribute = name.rsplit(".", 1)
    prefix = f"{module}._{attribute}_"
    if fmt == "int4":
        groups = in_features // group_size
        return {prefix + "qdata": ("I8", (out_features, in_features // 2)),
                prefix + "scale": ("BF16", (groups, out_features)),
                prefix + "zero_point": ("BF16", (groups, out_features))}
    return {prefix + "qdata": ("I8", (out_features, in_features)), prefix + "scale": ("F32", (out_features, 1)),
            prefix + "zero_point": ("I8", (out_features, 1))}


def flattened_tensors(name: str, weight: Weight) -> dict[str, np.ndarray]:
    """A Weight in int4/int8 as torchao's flattened parts {tensor name: array}, in flattened_specs' order."""
    module, attribute = name.rsplit(".", 1)
    prefix = f"{module}._{attribute}_"
    if weight.format == "int4":
        return {prefix + "qdata": weight.codes.view(np.int8), prefix + "scale": weight.scale.T,
                prefix + "zero_point": weight.zero.T}
    return {prefix + "qdata": weight.codes, prefix + "scale": weight.scale.reshape(-1, 1),
            prefix + "zero_point": np.zeros((weight.shape[0], 1), np.int8)}


def description(fmt: str, shape: tuple, group_size: int = 128, original_dtype: str = "bfloat16") -> str:
    """The __metadata__ entry torchao writes for one quantized weight (JSON text)."""
    torch_dtype = {"_type": "torch.dtype", "_data": original_dtype}
    if fmt == "int4":
        value = {"_type": "Int4Tensor", "_data": {"activation_dtype": {"_type": "torch.dtype", "_data": "bfloat16"},
                                                  "block_size": [1, group_size], "shape": [int(n) for n in shape]},
                 "_tensor_data_names": ["qdata", "scale", "zero_point"]}
    else:
        value = {"_type": "Int8Tensor", "_data": {"act_quant_kwargs": None, "reduce_range": False,
                                                  "block_size": [1, int(shape[1])], "dtype": torch_dtype},
                 "_tensor_data_names": ["zero_point", "qdata", "scale"]}
    return json.dumps(value)


def file_metadata(descriptions: dict) -> dict:
    """The file's __metadata__: {name: description} for every tensor (None: a plain tensor), and
    "tensor_names" listing them, which transformers checks before it loads the file."""
    plain = json.dumps({"_type": "Tensor"})
    metadata = {name: text or plain for name, text in descriptions.items()}
    metadata["tensor_names"] = json.dumps(list(descriptions))
    return metadata
