"""bitsandbytes 4-bit checkpoints: what transformers' `save_pretrained` writes for a model loaded with
`BitsAndBytesConfig(load_in_4bit=True)`, read with the codes used in place (memory-mapped).

config.json says so: quantization_config = {"quant_method": "bitsandbytes", "load_in_4bit": true,
"bnb_4bit_quant_type": "nf4" or "fp4", "bnb_4bit_use_double_quant": ..., "bnb_4bit_quant_storage":
"uint8"}. Each quantized linear layer NAME (a "....weight") is bitsandbytes' QuantState, packed
for safetensors as four tensors:

    NAME                                   U8  [OUT*IN/2, 1]  codes, two per byte, first in the HIGH nibble
    NAME.absmax                            F32 [OUT*IN/64]    one per block of 64 consecutive weights
    NAME.quant_map                         F32 [16]           the code table: fp4's or nf4's
    NAME.quant_state.bitsandbytes__nf4     U8  [n]            UTF-8 JSON: quant_type, blocksize, dtype, shape

bitsandbytes cuts the flattened matrix into blocks of 64; when IN % 64 == 0 no block straddles
two rows, so the codes are exactly minilm's [OUT, IN/2] and absmax its [OUT, IN/64]
(formats/bnb.py), and both are used as stored.

Double quantization (bnb_4bit_use_double_quant=True) stores absmax itself in 8 bits:

    NAME.absmax            U8  [OUT*IN/64]    codes into nested_quant_map
    NAME.nested_absmax     F32 [ceil(OUT*IN/64 / nested_blocksize)]
    NAME.nested_quant_map  F32 [256]
    the JSON adds nested_blocksize, nested_offset (and nested_dtype)

    absmax[i] = nested_quant_map[absmax_u8[i]] * nested_absmax[i // nested_blocksize] + nested_offset

decoded once, at load, to float32 (as bitsandbytes' dequantize_4bit does before every use); it
is 1/64 of the weights. Layers bitsandbytes leaves alone (the embedding; lm_head and other
`llm_int8_skip_modules`) are plain float tensors.
"""
from __future__ import annotations

import json

import numpy as np

from .errors import ConfigError, WeightsError
from .formats import Weight
from .formats.bnb import BLOCK, TABLES
from .safetensors_file import StoredTensor
from .weights import check_finite, mapped_checked, read_checked

QUANT_STATE = "quant_state.bitsandbytes__"
MAX_STATE_BYTES = 1 << 16


def bnb_quant_type(qc: dict, source: str) -> str:
    """"nf4" or "fp4": the quant type of a bitsandbytes quantization_config (8-bit is refused)."""
    if qc.get("load_in_8bit"):
        raise ConfigError(f"{source}: bitsandbytes 8-bit (LLM.int8) checkpoints are not supported; "
                          "4-bit ones (load_in_4bit) are")
    if not qc.get("load_in_4bit"):
        raise ConfigError(f"{source}: quantization_config has neither load_in_4bit nor load_in_8bit")
    quant_type = qc.get("bnb_4bit_quant_type", "fp4")
    if quant_type not in TABLES:
        raise ConfigError(f"{source}: bnb_4bit_quant_type={quant_type!r} must be one of {', '.join(TABLES)}")
    storage = qc.get("bnb_4bit_quant_storage", "uint8")
    if storage != "uint8":
        raise ConfigError(f"{source}: bnb_4bit_quant_storage={storage!r} is not supported (only uint8)")
    return quant_type


def bnb_weights(tensors: dict[str, StoredTensor], specs: dict, quant_type: str, mmap: bool):
    """Split off the quantized linear layers -> ({name: Weight in quant_type}, the other tensors)."""
    rest, weights = dict(tensors), {}
    for name, spec in specs.items():
        stored = rest.get(name)
        if spec.kind != "linear" or stored is None or stored.dtype != "U8":
            continue                                       # a float tensor: bitsandbytes skipped it
        prefix = name + "."
        parts = {n[len(prefix):]: rest.pop(n) for n in [n for n in rest if n.startswith(prefix)]}
        weights[name] = bnb_weight(rest.pop(name), parts, spec.shape, quant_type, mmap)
    return weights, rest


def bnb_weight(codes: StoredTensor, parts: dict[str, StoredTensor], shape: tuple, quant_type: str,
               mmap: bool) -> Weight:
    """One layer's QuantState tensors -> Weight(quant_type, [OUT, IN]) with codes [OUT, IN/2] in place."""
    out_features, in_features = shape
    where = f"{codes.path}: tensor {codes.name!r}"
    state_name = QUANT_STATE + quant_type
    for needed in ("absmax", "quant_map", state_name):
        if needed not in parts:
            raise WeightsError(f"{where} is bitsandbytes-quantized but {codes.name}.{needed} is missing")
    unknown = sorted(set(parts) - {"absmax", "quant_map", state_name, "nested_absmax", "nested_quant_map"})
    if unknown:
        raise WeightsError(f"{where}: unexpected quant-state tensor {codes.name}.{unknown[0]}")
    state = quant_state(parts[state_name])
    found = (state.get("quant_type"), state.get("blocksize"), state.get("shape"))
    if found != (quant_type, BLOCK, [out_features, in_features]):
        raise WeightsError(f"{where}: its quant state says quant_type={found[0]!r}, blocksize={found[1]!r}, "
                           f"shape={found[2]!r}; expected {quant_type!r}, {BLOCK}, {[out_features, in_features]}")
    if in_features % BLOCK:
        raise WeightsError(f"{where}: rows of {in_features} are not whole blocks of {BLOCK} (blocks would "
                           "straddle rows; minilm's fp4/nf4 kernels need IN % 64 == 0)")
    if codes.shape not in ((out_features * in_features // 2, 1), (out_features * in_features // 2,)):
        raise WeightsError(f"{where}: codes have shape {list(codes.shape)}, expected "
                           f"{[out_features * in_features // 2, 1]} for a [{out_features}, {in_features}] matrix")
    table = small(parts["quant_map"], "F32", (16,))
    if not np.array_equal(table, TABLES[quant_type]):
        raise WeightsError(f"{where}: quant_map is not bitsandbytes' {quant_type} table")
    values = codes.map() if mmap else codes.read()
    absmax = read_absmax(parts, state, out_features * in_features // BLOCK, mmap, where)
    return Weight(quant_type, shape, {"codes": values.reshape(out_features, in_features // 2),
                                      "absmax": absmax.reshape(out_features, in_features // BLOCK)})


def read_absmax(parts: dict, state: dict, blocks: int, mmap: bool, where: str) -> np.ndarray:
    """float32 [blocks]: stored as is, or decoded from double quantization."""
    stored = parts["absmax"]
    if stored.shape != (blocks,) or stored.dtype not in ("F32", "U8"):
        raise WeightsError(f"{where}: absmax is {stored.dtype}{list(stored.shape)}, expected F32 or U8 [{blocks}]")
    if stored.dtype == "F32":
        if "nested_absmax" in parts:
            raise WeightsError(f"{where}: float32 absmax beside nested_absmax (double quantization needs U8)")
        return mapped_checked(stored) if mmap else read_checked(stored)   # 1/8 of the codes' bytes: scanned
    if "nested_absmax" not in parts or "nested_quant_map" not in parts:
        raise WeightsError(f"{where}: 8-bit absmax without nested_absmax and nested_quant_map")
    nested_block, offset = state.get("nested_blocksize"), state.get("nested_offset")
    if not isinstance(nested_block, int) or nested_block <= 0 or not isinstance(offset, (int, float)):
        raise WeightsError(f"{where}: double quantization needs nested_blocksize and nested_offset in its state")
    nested = small(parts["nested_absmax"], "F32", (-(-blocks // nested_block),))
    table = small(parts["nested_quant_map"], "F32", (256,))
    absmax = table[stored.read()] * nested[np.arange(blocks) // nested_block] + np.float32(offset)
    check_finite(stored, absmax)
    return absmax


def small(stored: StoredTensor, dtype: str, shape: tuple) -> np.ndarray:
    """A small tensor of the quant state, read after checking its dtype and shape."""
    if stored.dtype != dtype or stored.shape != shape:
        raise WeightsError(f"{stored.path}: tensor {stored.name!r} is {stored.dtype}{list(stored.shape)}, "
                           f"expected {dtype}{list(shape)}")
    return stored.read()


def quant_state(stored: StoredTensor) -> dict:
    """The JSON object a quant_state.bitsandbytes__* tensor holds as UTF-8 bytes."""
    if stored.dtype != "U8" or len(stored.shape) != 1 or stored.nbytes > MAX_STATE_BYTES:
        raise WeightsError(f"{stored.path}: tensor {stored.name!r} is {stored.dtype}{list(stored.shape)}, "
                           "expected the U8 bytes of a JSON quant state")
    try:
        state = json.loads(stored.read().tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise WeightsError(f"{stored.path}: tensor {stored.name!r} is not a JSON quant state ({e})") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{stored.path}: tensor {stored.name!r} holds JSON but not an object")
    return state


# --- writing (random checkpoints for benchmarks and tests) --------------------------------------------

def quantization_config(quant_type: str, compute_dtype: str = "bfloat16") -> dict:
    """config.json's quantization_config for a bitsandbytes 4-bit checkpoint (no double quantization)."""
    return {"quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
            "bnb_4bit_quant_type": quant_type, "bnb_4bit_use_double_quant": False,
            "bnb_4bit_quant_storage": "uint8", "bnb_4bit_compute_dtype": compute_dtype}


def state_tensors(name: str, weight: Weight, original_dtype: str = "bfloat16") -> dict[str, np.ndarray]:
    """A Weight in fp4/nf4 as the tensors bitsandbytes saves, {tensor name: array}, in its order."""
    return {name: np.ascontiguousarray(weight.codes).reshape(-1, 1),
            f"{name}.absmax": np.ascontiguousarray(weight.absmax, dtype=np.float32).reshape(-1),
            f"{name}.quant_map": TABLES[weight.format],
            f"{name}.{QUANT_STATE}{weight.format}": state_bytes(weight.format, weight.shape, original_dtype)}


def state_specs(name: str, shape: tuple, quant_type: str, original_dtype: str = "bfloat16") -> dict:
    """{tensor name: (safetensors dtype, shape)} of state_tensors, before any value exists."""
    out_features, in_features = shape
    return {name: ("U8", (out_features * in_features // 2, 1)),
            f"{name}.absmax": ("F32", (out_features * in_features // BLOCK,)),
            f"{name}.quant_map": ("F32", (16,)),
            f"{name}.{QUANT_STATE}{quant_type}": ("U8", state_bytes(quant_type, shape, original_dtype).shape)}


def state_bytes(quant_type: str, shape: tuple, original_dtype: str) -> np.ndarray:
    """The quant_state.bitsandbytes__* tensor: bitsandbytes' non-tensor state as UTF-8 JSON bytes."""
    state = {"quant_type": quant_type, "blocksize": BLOCK, "dtype": original_dtype,
             "shape": [int(n) for n in shape]}
    return np.frombuffer(json.dumps(state).encode("utf-8"), np.uint8)
