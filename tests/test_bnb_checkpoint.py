"""bitsandbytes 4-bit checkpoints (transformers' save_pretrained of a load_in_4bit model) load with
their codes memory-mapped and give transformers' logits.

The checkpoints are made by transformers + bitsandbytes themselves, on the CPU, from a tiny float32
model; the expected logits are that quantized transformers model's. Negative control: the same
codes read with GGUF's nibble order miss by far more than the tolerance.
"""
import json
import os
import shutil

import numpy as np
import pytest

import minilm
from minilm.errors import ConfigError, WeightsError
from minilm.safetensors_file import read_header, save
from minilm.testing import random_checkpoint, tiny_checkpoint, tiny_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
try:
    import bitsandbytes  # noqa: F401
except Exception as e:                                                    # noqa: BLE001
    pytest.skip(f"bitsandbytes does not import on this machine: {e}", allow_module_level=True)

IDS = np.array([[5, 17, 3, 99, 42, 7, 250, 1]])
FAMILY_CLASS = {"llama": "LlamaForCausalLM", "cohere2": "Cohere2ForCausalLM"}


def quantized_by_transformers(family: str, quant_type: str, double_quant: bool, folder) -> tuple[str, np.ndarray]:
    """-> (the saved 4-bit checkpoint, transformers' float32 logits of IDS on that quantized model)."""
    source = tiny_checkpoint(family, os.path.join(folder, f"{family}-source"))
    config = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                                             bnb_4bit_use_double_quant=double_quant,
                                             bnb_4bit_compute_dtype=torch.float32)
    cls = getattr(transformers, FAMILY_CLASS[family])
    model = cls.from_pretrained(source, quantization_config=config, dtype=torch.float32, device_map="cpu")
    saved = os.path.join(folder, f"{family}-{quant_type}-{double_quant}")
    model.save_pretrained(saved)
    float32_path(model)
    with torch.no_grad():
        logits = model(torch.from_numpy(IDS)).logits.float().numpy()
    return saved, logits


def float32_path(model) -> None:
    """On a CPU with AVX512-BF16, bitsandbytes (0.50) repacks each Linear4bit at its first eval
    forward and computes it in bf16 (activations and absmax rounded to bf16: logits off by ~0.1 on
    these models); every other CPU takes its float32 path, dequantize_4bit then a float32 linear.
    The reference is that float32 path on every CPU."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bnb")
    return {(family, qt, dq): quantized_by_transformers(family, qt, dq, folder)
            for family, qt, dq in [("llama", "nf4", False), ("llama", "fp4", False), ("llama", "nf4", True),
                                   ("llama", "fp4", True), ("cohere2", "nf4", False)]}


@pytest.mark.parametrize("key", [("llama", "nf4", False), ("llama", "fp4", False), ("llama", "nf4", True),
                                 ("llama", "fp4", True), ("cohere2", "nf4", False)])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_logits_equal_transformers_bitsandbytes(saved, key, backend):
    folder, expected = saved[key]
    model = minilm.load(folder, backend=backend, progress=False)
    assert model.weights["model.layers.0.mlp.down_proj.weight"].format == key[1]
    np.testing.assert_allclose(model(IDS).logits, expected, atol=1e-4, rtol=0)


def test_codes_are_memory_mapped_and_equal_the_copied_path(saved):
    folder, expected = saved["llama", "nf4", False]
    mapped = minilm.load(folder, progress=False)
    copied = minilm.load(folder, progress=False, mmap=False)
    quantized = [w for w in mapped.weights.values() if getattr(w, "format", None) == "nf4"]
    assert len(quantized) == 2 * 7                                           # q k v o gate up down, 2 layers
    assert all(not w.codes.flags.owndata and not w.codes.flags.writeable for w in quantized)
    assert np.array_equal(mapped(IDS).logits, copied(IDS).logits)


def test_negative_control_gguf_nibble_order_misses(saved, tmp_path):
    folder, expected = saved["llama", "nf4", False]
    swapped = shutil.copytree(folder, tmp_path / "swapped")
    path = os.path.join(swapped, "model.safetensors")
    tensors = {name: t.read() for name, t in read_header(path)[0].items()}
    for name, values in tensors.items():
        if name.endswith("_proj.weight"):
            tensors[name] = (values << 4) | (values >> 4)                    # low nibble first, as GGUF packs
    save(path, tensors)
    logits = minilm.load(swapped, progress=False)(IDS).logits
    assert np.abs(logits - expected).max() > 1e-2


def edit_config(folder, **changes) -> None:
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["quantization_config"].update(changes)
    with open(path, "w") as f:
        json.dump(config, f)


@pytest.mark.parametrize("changes, message", [
    ({"quant_method": "gptq"}, "quant_method='gptq' is not supported"),
    ({"load_in_4bit": False, "load_in_8bit": True}, "8-bit .LLM.int8. checkpoints are not supported"),
    ({"bnb_4bit_quant_storage": "bfloat16"}, "bnb_4bit_quant_storage='bfloat16' is not supported"),
    ({"bnb_4bit_quant_type": "int4"}, "bnb_4bit_quant_type='int4' must be one of"),
])
def test_other_quantizations_are_refused_by_name(saved, tmp_path, changes, message):
    folder = shutil.copytree(saved["llama", "nf4", False][0], tmp_path / "edited")
    edit_config(folder, **changes)
    with pytest.raises(ConfigError, match=message):
        minilm.load(folder, progress=False)


def test_a_missing_or_wrong_quant_state_names_the_tensor(saved, tmp_path):
    folder = shutil.copytree(saved["llama", "nf4", False][0], tmp_path / "broken")
    path = os.path.join(folder, "model.safetensors")
    tensors = {name: t.read() for name, t in read_header(path)[0].items()}
    del tensors["model.layers.1.mlp.up_proj.weight.absmax"]
    tensors["model.layers.0.self_attn.q_proj.weight.quant_map"] = tensors[
        "model.layers.0.self_attn.q_proj.weight.quant_map"][::-1].copy()
    save(path, tensors)
    with pytest.raises(WeightsError, match="q_proj.weight.*quant_map is not bitsandbytes' nf4 table"):
        minilm.load(folder, progress=False)
    tensors["model.layers.0.self_attn.q_proj.weight.quant_map"] = tensors[
        "model.layers.0.self_attn.q_proj.weight.quant_map"][::-1].copy()
    save(path, tensors)
    with pytest.raises(WeightsError, match=r"up_proj.weight' is bitsandbytes-quantized but .*\.absmax is missing"):
        minilm.load(folder, progress=False)


@pytest.mark.parametrize("mmap", [False, True])
def test_a_nan_scale_is_refused_copied_or_mapped(saved, tmp_path, mmap):
    """Also when absmax is used in place from the map (issue 23: it was absorbed)."""
    folder = shutil.copytree(saved["llama", "nf4", False][0], tmp_path / "nan")
    path = os.path.join(folder, "model.safetensors")
    tensors = {name: t.read() for name, t in read_header(path)[0].items()}
    tensors["model.layers.0.mlp.up_proj.weight.absmax"][3] = np.nan
    save(path, tensors)
    with pytest.raises(WeightsError, match="up_proj.weight.absmax' contains NaN or Inf"):
        minilm.load(folder, progress=False, mmap=mmap)


def test_quantizing_an_already_quantized_checkpoint_is_refused(saved):
    with pytest.raises(ValueError, match="already quantized .nf4, bitsandbytes."):
        minilm.load(saved["llama", "nf4", False][0], quantize="q4_0", progress=False)


@pytest.mark.parametrize("fmt", ["nf4", "fp4"])
def test_random_checkpoint_writes_what_transformers_loads(tmp_path, fmt):
    """The writer's layout is transformers': it loads the file, and its dequantized weights are
    minilm's rounded to bfloat16 (the checkpoint's original dtype, which bitsandbytes decodes to)."""
    folder = random_checkpoint(tiny_config("llama"), tmp_path / fmt, dtype=fmt)
    model = minilm.load(folder, weight_dtype="bfloat16", progress=False)
    ours = model.weights["model.layers.1.mlp.gate_proj.weight"]
    assert ours.format == fmt and ours.shape == (128, 64)
    theirs = transformers.LlamaForCausalLM.from_pretrained(folder, device_map="cpu")
    import bitsandbytes.functional as F
    layer = theirs.model.layers[1].mlp.gate_proj
    decoded = F.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float().numpy()
    rounded = torch.from_numpy(ours.dequantize()).to(torch.bfloat16).float().numpy()
    assert np.array_equal(decoded, rounded)
    assert np.isfinite(model(IDS).logits).all()
