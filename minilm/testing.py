"""Random-weight checkpoints: tiny ones for tests, notebooks and docs, real-size ones for benchmarks.

    folder = tiny_checkpoint("cohere2", sliding_window=4)          # config.json + model.safetensors
    folder = random_checkpoint(REAL_CONFIGS["llama-2-7b"], "out/", dtype="bfloat16")
    ids, mask = left_padded_batch(length=14)                        # inputs for tiny models

Tensors are written one at a time (a 7B checkpoint never sits in memory) in the
family's own tensor list, so the names and shapes are exactly what minilm and
transformers load. Two initialisations:

  "scaled"  embeddings ~N(0, 1), matrices ~N(0, 0.2), norm weights 1 +- 0.3, biases ~N(0, 0.2):
            large enough that attention patterns, RoPE and norms visibly move the logits
            (transformers' own tiny init makes logits nearly flat and hides bugs)
  "hf"      transformers' init (matrices ~N(0, initializer_range=0.02), norms 1): for benchmarks
"""
from __future__ import annotations

import copy
import json
import os
import tempfile

import numpy as np

from . import bnb_file, torchao_file
from .config import parse_config
from .formats import Weight
from .formats.bfloat16 import to_bfloat16
from .formats.bnb import BLOCK as BNB_BLOCK, TABLES as BNB_TABLES
from .models import FAMILIES
from .progress import progress_bar
from .safetensors_file import SafetensorsWriter

_ROPE = {"rope_type": "default", "rope_theta": 10000.0}
TINY_CONFIGS = {
    "llama": {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 256, "hidden_size": 64,
              "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "hidden_act": "silu", "rope_parameters": _ROPE,
              "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
              "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0},
    "cohere": {"model_type": "cohere", "architectures": ["CohereForCausalLM"], "vocab_size": 256, "hidden_size": 64,
               "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "max_position_embeddings": 128, "layer_norm_eps": 1e-5, "hidden_act": "silu", "rope_parameters": _ROPE,
               "logit_scale": 0.0625, "use_qk_norm": False, "attention_bias": False, "tie_word_embeddings": True,
               "bos_token_id": 5, "eos_token_id": 2, "pad_token_id": 0},
    "cohere2": {"model_type": "cohere2", "architectures": ["Cohere2ForCausalLM"], "vocab_size": 256,
                "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
                "num_key_value_heads": 2, "max_position_embeddings": 128, "layer_norm_eps": 1e-5, "hidden_act": "silu",
                "rope_parameters": _ROPE, "logit_scale": 0.0625, "sliding_window": 4,
                "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
                "attention_bias": False, "tie_word_embeddings": True, "bos_token_id": 5, "eos_token_id": 2,
                "pad_token_id": 0},
}

# The seeds' models at their published configs (values from their config.json on the Hub).
REAL_CONFIGS = {
    "llama-2-7b": {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 32000,
                   "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096,
                   "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
                   "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None},
    "llama-2-13b": {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 32000,
                    "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
                    "num_attention_heads": 40, "num_key_value_heads": 40, "max_position_embeddings": 4096,
                    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
                    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None},
    "command-r7b": {"model_type": "cohere2", "architectures": ["Cohere2ForCausalLM"], "vocab_size": 256000,
                    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                    "max_position_embeddings": 8192, "layer_norm_eps": 1e-5, "rope_theta": 50000.0,
                    "logit_scale": 0.25, "sliding_window": 4096, "sliding_window_pattern": 4,
                    "tie_word_embeddings": True, "bos_token_id": 5, "eos_token_id": 255001, "pad_token_id": 0},
    "command-r-35b": {"model_type": "cohere", "architectures": ["CohereForCausalLM"], "vocab_size": 256000,
                      "hidden_size": 8192, "intermediate_size": 22528, "num_hidden_layers": 40,
                      "num_attention_heads": 64, "num_key_value_heads": 64, "max_position_embeddings": 8192,
                      "layer_norm_eps": 1e-5, "rope_theta": 8000000.0, "logit_scale": 0.0625,
                      "use_qk_norm": False, "tie_word_embeddings": True, "bos_token_id": 5,
                      "eos_token_id": 255001, "pad_token_id": 0},
}

STORAGE = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
GGUF_FORMATS = ("q8_0", "q4_0", "q4_1")      # written as a GGUF file (blocks as llama.cpp stores them)
BNB_FORMATS = ("nf4", "fp4")                 # written as a bitsandbytes 4-bit checkpoint (save_pretrained's layout)
TORCHAO_FORMATS = ("int4", "int8")           # written as a torchao checkpoint (save_pretrained's safetensors layout)
DTYPES = (*STORAGE, *GGUF_FORMATS, *BNB_FORMATS, *TORCHAO_FORMATS)
BLOCK = {"q8_0": (34, 73.9), "q4_0": (18, 4.6), "q4_1": (20, 4.6)}   # bytes per 32 weights, std of the codes


def tiny_config(family: str, **overrides) -> dict:
    """One of TINY_CONFIGS with keys replaced (a value of None removes the key)."""
    config = copy.deepcopy(TINY_CONFIGS[family])
    for key, value in overrides.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return config


def random_tensor(rng: np.random.Generator, name: str, shape: tuple, kind: str, init: str,
                  initializer_range: float = 0.02) -> np.ndarray:
    """One tensor's random values (float32), by the rules in the module docstring."""
    if kind == "vector":
        if name.endswith("norm.weight"):
            return (1 + 0.3 * rng.uniform(-1, 1, shape)).astype(np.float32) if init == "scaled" \
                else np.ones(shape, np.float32)
        std = 0.2 if init == "scaled" else 0.0                    # biases
    elif kind == "embedding":
        std = 1.0 if init == "scaled" else initializer_range
    else:
        std = 0.2 if init == "scaled" else initializer_range
    return (std * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32, copy=False)


def random_checkpoint(config: dict, folder, dtype: str = "float32", seed: int = 0, init: str = "scaled",
                      progress: bool = False) -> str:
    """Write config.json + random weights, one tensor at a time; returns what minilm.load takes.

    dtype float32 / bfloat16 / float16: model.safetensors in the folder (returns the folder);
    q8_0 / q4_0 / q4_1: model.gguf with random blocks, as llama.cpp lays them out (returns its path);
    nf4 / fp4: model.safetensors as transformers saves a bitsandbytes 4-bit model, and
    int4 / int8 as it saves a torchao one (Int4WeightOnlyConfig(group_size=128; 32 where a tiny
    model's rows are not multiples of 128), Int8WeightOnlyConfig()):
    random codes for the decoder's linear layers, the other tensors in bfloat16 (returns the folder).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} must be one of {', '.join(DTYPES)}")
    folder = os.fspath(folder)
    parsed = parse_config(config, source="random_checkpoint config")
    specs = FAMILIES[parsed.model_type].tensor_specs(parsed)
    if parsed.tie_word_embeddings:
        specs.pop("lm_head.weight", None)                         # tied: stored once, like save_pretrained
    os.makedirs(folder, exist_ok=True)
    packed = dtype if dtype in (*BNB_FORMATS, *TORCHAO_FORMATS) else None    # codes, not floats
    float_dtype = "bfloat16" if packed else dtype
    rows = [spec.shape[1] for spec in specs.values() if spec.kind == "linear"]
    group = torchao_file.model_group_size(rows) if dtype == "int4" else None
    extra = {"quantization_config": quantization_config(dtype, group)} if packed else {}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({**config, "torch_dtype": float_dtype, "dtype": float_dtype, **extra}, f, indent=1)
    rng = np.random.default_rng(seed)
    std = config.get("initializer_range", 0.02)
    if dtype in GGUF_FORMATS:
        return write_random_gguf(parsed, specs, os.path.join(folder, "model.gguf"), dtype, rng, init, std, progress)
    storage, descriptions = {}, {}
    for name, spec in specs.items():
        if packed and spec.kind == "linear":
            storage.update(packed_specs(name, spec.shape, dtype, group))
            descriptions[name] = torchao_file.description(dtype, spec.shape, group) if dtype in TORCHAO_FORMATS \
                else None
        else:
            storage[name], descriptions[name] = (STORAGE[float_dtype], spec.shape), None
    metadata = torchao_file.file_metadata(descriptions) if dtype in TORCHAO_FORMATS else {}
    with SafetensorsWriter(os.path.join(folder, "model.safetensors"), storage, metadata) as out, \
            progress_bar(len(specs), "writing random weights", enabled=progress) as bar:
        for name, spec in specs.items():
            if packed and spec.kind == "linear":
                weight = random_codes(rng, dtype, spec.shape, 0.2 if init == "scaled" else std, group)
                for part, values in packed_tensors(name, weight).items():
                    out.write(part, values)
            else:
                values = random_tensor(rng, name, spec.shape, spec.kind, init, std)
                out.write(name, to_bfloat16(values) if float_dtype == "bfloat16" else values.astype(float_dtype))
            bar.update(1)
    return folder


def quantization_config(fmt: str, group_size: int | None) -> dict:
    """config.json's quantization_config of a checkpoint of already quantized codes in `fmt`."""
    if fmt in BNB_FORMATS:
        return bnb_file.quantization_config(fmt)
    return torchao_file.quantization_config(fmt, group_size or 128)


def packed_specs(name: str, shape: tuple, fmt: str, group_size: int | None) -> dict:
    if fmt in BNB_FORMATS:
        return bnb_file.state_specs(name, shape, fmt)
    return torchao_file.flattened_specs(name, shape, fmt, group_size or 128)


def packed_tensors(name: str, weight: Weight) -> dict:
    return (bnb_file.state_tensors if weight.format in BNB_FORMATS else torchao_file.flattened_tensors)(name, weight)


def random_codes(rng: np.random.Generator, fmt: str, shape: tuple, std: float, group_size: int | None = None) -> Weight:
    """Random fp4/nf4/int4/int8 codes whose weights have about this std: uniform codes and no
    quantization pass, like random_blocks. fp4/nf4/int8 share one scale; int4's vary by +-25% per
    group, so a writer that transposed them would be seen."""
    out_features, in_features = shape
    if fmt == "int8":
        codes = rng.integers(-128, 128, size=shape, dtype=np.int8)
        return Weight(fmt, shape, {"codes": codes, "scale": np.full(out_features, std / 73.9, np.float32)})
    codes = rng.integers(0, 256, size=(out_features, in_features // 2), dtype=np.uint8)
    if fmt == "int4":                                   # q uniform in -8..7: std 4.61, mean -0.5 (zero centres it)
        d = (std / 4.61 * rng.uniform(0.75, 1.25, (out_features, in_features // group_size))).astype(np.float32)
        return Weight(fmt, shape, {"codes": codes, "scale": to_bfloat16(d), "zero": to_bfloat16(d / 2)},
                      options={"group_size": group_size})
    absmax = np.full((out_features, in_features // BNB_BLOCK), std / float(np.std(BNB_TABLES[fmt])), np.float32)
    return Weight(fmt, shape, {"codes": codes, "absmax": absmax})


def random_blocks(rng: np.random.Generator, fmt: str, shape: tuple, std: float) -> np.ndarray:
    """Random llama.cpp blocks [OUT, IN/32, bytes] whose weights have about this std: uniform codes,
    one fp16 scale per block (and for q4_1 the min that centres them). No quantization pass: a 35B
    checkpoint is written in minutes, and the speed of a kernel does not depend on the values."""
    nbytes, code_std = BLOCK[fmt]
    blocks = rng.integers(0, 256, size=(shape[0], shape[1] // 32, nbytes), dtype=np.uint8)
    scale = np.float16(std / code_std)
    blocks[..., 0:2] = np.frombuffer(scale.tobytes(), np.uint8)
    if fmt == "q4_1":                                             # w = d*n + m with n in 0..15: m = -8d
        blocks[..., 2:4] = np.frombuffer(np.float16(-8 * scale).tobytes(), np.uint8)
    return blocks


def write_random_gguf(config, specs, path, fmt, rng, init, std, progress) -> str:
    from .gguf_file import write_gguf

    def make(name, spec):
        if spec.kind == "vector":
            return lambda: random_tensor(rng, name, spec.shape, spec.kind, init, std)
        scale = 1.0 if (init == "scaled" and spec.kind == "embedding") else (0.2 if init == "scaled" else std)
        return lambda: random_blocks(rng, fmt, spec.shape, scale)

    tensors = {name: ("float32" if spec.kind == "vector" else fmt, spec.shape, make(name, spec))
               for name, spec in specs.items()}
    return write_gguf(path, config, tensors, progress=progress)


def tiny_checkpoint(family: str, folder=None, seed: int = 0, dtype: str = "float32", **overrides) -> str:
    """A tiny random checkpoint of `family` (TINY_CONFIGS with overrides) in `folder` or a new temp folder."""
    folder = folder or tempfile.mkdtemp(prefix=f"minilm-tiny-{family}-")
    return random_checkpoint(tiny_config(family, **overrides), folder, dtype=dtype, seed=seed)


# --- inputs that tests and `minilm gpu-check` feed tiny models -----------------------------------

# Two backends running float32 arithmetic on the same weights: their logits may differ by this much
# (other summation orders, fused multiply-adds); a wrong kernel moves them by orders of magnitude more.
LOGIT_TOLERANCE = 1e-4


def random_ids(batch, length, vocab=256, seed=0, low=3):
    return np.random.default_rng(seed).integers(low, vocab, size=(batch, length))


def left_padded_batch(length=16, pad=3, seed=0):
    """Two rows of random ids; row 1 is left-padded by `pad` (id 0, mask 0)."""
    ids = random_ids(2, length, seed=seed)
    mask = np.ones_like(ids)
    ids[1, :pad], mask[1, :pad] = 0, 0
    return ids, mask


def incremental_logits(model, ids, mask, prefix):
    """minilm: prefill ids[:, :prefix], then decode the rest one token at a time with the KV cache."""
    cache = model.new_cache(ids.shape[0])
    logits = [model(ids[:, :prefix], attention_mask=mask[:, :prefix], cache=cache).logits]
    for t in range(prefix, ids.shape[1]):
        logits.append(model(ids[:, t:t + 1], attention_mask=mask[:, t:t + 1], cache=cache).logits)
    return np.concatenate(logits, axis=1)


# --- `minilm random-checkpoint` --------------------------------------------------------------------

def named_config(name: str | None) -> dict | None:
    """The config `random-checkpoint --config NAME` writes (a published or a tiny one), or None: the other
    commands accept these names wherever a model's config is all they need (`minilm masks --model NAME`)."""
    if name is None or os.path.exists(os.path.expanduser(name)):             # a folder of that name wins
        return None
    config = REAL_CONFIGS.get(name) or TINY_CONFIGS.get(name)
    return copy.deepcopy(config) if config else None


def add_arguments(parser) -> None:
    parser.add_argument("out", help="folder to write (config.json + model.safetensors, or model.gguf)")
    parser.add_argument("--config", required=True, choices=sorted(REAL_CONFIGS) + sorted(TINY_CONFIGS),
                        help="a published config (real size) or a tiny test config")
    parser.add_argument("--dtype", default="bfloat16", choices=DTYPES,
                        help="storage: safetensors float32/bfloat16/float16, a GGUF of llama.cpp blocks "
                             "(q8_0/q4_0/q4_1), a bitsandbytes 4-bit checkpoint (nf4/fp4) or a torchao "
                             "one (int4 with groups of 128, int8) "
                             "(default: %(default)s)")
    parser.add_argument("--init", default=None, choices=["hf", "scaled"],
                        help="weight scale: transformers' init (default for real configs) or the tests' "
                             "scaled-up init (default for tiny ones)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a folder that is not empty (its files of the same names are replaced)")


def main(args) -> int:
    if os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
        raise ValueError(f"{args.out} is not empty; random-checkpoint would replace its config.json and weights: "
                         "choose an empty or new folder, or pass --overwrite")
    config = named_config(args.config) or TINY_CONFIGS[args.config]
    init = args.init or ("hf" if args.config in REAL_CONFIGS else "scaled")
    path = random_checkpoint(config, args.out, dtype=args.dtype, seed=args.seed, init=init, progress=True)
    weights = path if path.endswith(".gguf") else os.path.join(path, "model.safetensors")
    print(f"wrote {weights} ({os.path.getsize(weights) / 1e9:.2f} GB); load it with minilm.load({path!r})")
    return 0
