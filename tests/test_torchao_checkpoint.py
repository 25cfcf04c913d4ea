"""torchao checkpoints (transformers' save_pretrained of a TorchAoConfig model, safetensors) load with
their codes memory-mapped and give the quantized model's logits.

int8: transformers + torchao quantize a tiny float32 model on the CPU (Int8WeightOnlyConfig) and
save it; the expected logits are that quantized transformers model's.
int4: torchao's Int4WeightOnlyConfig quantizes with mslk, a CUDA library, so here the codes come
from mslk's published formula (torchao_reference), are wrapped in torchao's own Int4Tensor and
flattened by torchao's own safetensors code, exactly as transformers saves them. transformers loads
that file; the expected logits are a float32 transformers model whose weights are the loaded
Int4Tensors' q * scale + zero, computed in torch. Negative control: the scales read without
torchao's transpose miss by far more than the tolerance.
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
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict
    from torchao.quantization import Int4Tensor, Int4WeightOnlyConfig, Int8WeightOnlyConfig
except Exception as e:                                                    # noqa: BLE001
    pytest.skip(f"torchao does not import on this machine: {e}", allow_module_level=True)

from torchao_reference import mslk_int4_row_quantize_zp  # noqa: E402

IDS = np.array([[5, 17, 3, 99, 42, 7, 250, 1]])
FAMILY_CLASS = {"llama": "LlamaForCausalLM", "cohere2": "Cohere2ForCausalLM"}
GROUP = 32                                         # rows of 64 and 128: 2 and 4 groups, so the transpose matters


def hf_model(folder, **kwargs):
    config = json.load(open(os.path.join(folder, "config.json")))
    cls = getattr(transformers, FAMILY_CLASS[config["model_type"]])
    return cls.from_pretrained(folder, dtype=torch.float32, device_map="cpu", **kwargs).eval()


def logits_of(model) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(IDS)).logits.float().numpy()


def int8_by_transformers(family: str, folder) -> tuple[str, np.ndarray]:
    """-> (the saved int8 checkpoint, transformers' logits of IDS on that quantized model)."""
    source = tiny_checkpoint(family, os.path.join(folder, f"{family}-source"))
    model = hf_model(source, quantization_config=transformers.TorchAoConfig(Int8WeightOnlyConfig()))
    assert type(model.model.layers[0].mlp.up_proj.weight).__name__ == "Int8Tensor"
    saved = os.path.join(folder, f"{family}-int8")
    model.save_pretrained(saved)
    return saved, logits_of(model)


def int4_as_transformers_saves_it(family: str, folder) -> str:
    """A tiny model's linear layers in torchao's Int4Tensor, flattened by torchao, saved with the
    torchao quantization_config transformers writes."""
    source = tiny_checkpoint(family, os.path.join(folder, f"{family}-source"))
    model = hf_model(source).to(torch.bfloat16)                          # torchao quantizes a bf16 model
    state = {}
    for name, value in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue                                                     # stored once, as save_pretrained does
        if name.endswith("_proj.weight"):
            codes, scale, zero = mslk_int4_row_quantize_zp(value.float().numpy(), GROUP)
            value = Int4Tensor(torch.from_numpy(codes.view(np.int8)), scale.t().contiguous(), zero.t().contiguous(),
                               [1, GROUP], value.shape)
        state[name] = value
    tensors, metadata = flatten_tensor_state_dict(state)
    saved = os.path.join(folder, f"{family}-int4")
    os.makedirs(saved)
    from safetensors.torch import save_file
    save_file(tensors, os.path.join(saved, "model.safetensors"), metadata={"format": "pt", **metadata})
    config = json.load(open(os.path.join(source, "config.json")))
    config["quantization_config"] = transformers.TorchAoConfig(Int4WeightOnlyConfig(group_size=GROUP)).to_dict()
    with open(os.path.join(saved, "config.json"), "w") as f:
        json.dump(config, f)
    return saved


def int4_expected_logits(folder) -> np.ndarray:
    """transformers loads the int4 file; its Int4Tensors, decoded in torch, in a float32 model."""
    quantized = hf_model(folder)
    plain = hf_model(folder.rsplit("-int4", 1)[0] + "-source")
    weights = {}
    for name, param in quantized.named_parameters():
        if type(param).__name__ == "Int4Tensor":
            assert param.block_size == [1, GROUP]
            q = torch.stack([param.qdata & 15, (param.qdata >> 4) & 15], -1).reshape(param.shape[0], -1)
            q = ((q ^ 8) - 8).float()                                    # sign-extended nibbles, -8..7
            scale, zero = param.scale.t().float(), param.zero_point.t().float()   # stored [IN/G, OUT]
            weights[name] = (q.reshape(param.shape[0], -1, GROUP) * scale[..., None] + zero[..., None]).reshape(
                param.shape)
        else:
            weights[name] = param.float()
    assert len([n for n in weights if n.endswith("_proj.weight")]) >= 14
    plain.load_state_dict(weights, strict=False)
    return logits_of(plain)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("torchao")
    made = {("llama", "int8"): int8_by_transformers("llama", folder),
            ("cohere2", "int8"): int8_by_transformers("cohere2", folder)}
    for family in ("llama", "cohere2"):
        path = int4_as_transformers_saves_it(family, str(folder))
        made[family, "int4"] = path, int4_expected_logits(path)
    return made


@pytest.mark.parametrize("key", [("llama", "int8"), ("cohere2", "int8"), ("llama", "int4"), ("cohere2", "int4")])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_logits_equal_transformers_torchao(saved, key, backend):
    folder, expected = saved[key]
    model = minilm.load(folder, backend=backend, progress=False)
    assert model.weights["model.layers.0.mlp.down_proj.weight"].format == key[1]
    np.testing.assert_allclose(model(IDS).logits, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("fmt", ["int4", "int8"])
def test_codes_are_memory_mapped_and_equal_the_copied_path(saved, fmt):
    folder, _ = saved["llama", fmt]
    mapped = minilm.load(folder, progress=False)
    copied = minilm.load(folder, progress=False, mmap=False)
    quantized = [w for w in mapped.weights.values() if getattr(w, "format", None) == fmt]
    assert len(quantized) == 2 * 7                                           # q k v o gate up down, 2 layers
    assert all(not w.codes.flags.owndata and not w.codes.flags.writeable for w in quantized)
    if fmt == "int4":                       # scale and zero read in place too; copied: row-major, the faster layout
        assert all(not w.scale.flags.owndata and w.scale.flags.f_contiguous for w in quantized)
        copies = [w for w in copied.weights.values() if getattr(w, "format", None) == fmt]
        assert all(w.scale.flags.c_contiguous and w.zero.flags.c_contiguous for w in copies)
    assert np.array_equal(mapped(IDS).logits, copied(IDS).logits)


@pytest.mark.parametrize("fmt", ["int4", "int8"])
def test_fast_mode_on_the_stored_layout_equals_the_numpy_reference(saved, fmt):
    """mode="fast" (int8 activations, as llama.cpp): the numba kernels reading torchao's transposed
    scales agree with the NumPy reference of the same arithmetic."""
    folder, _ = saved["llama", fmt]
    reference = minilm.load(folder, backend="numpy", mode="fast", progress=False)(IDS).logits
    numba = minilm.load(folder, backend="numba", mode="fast", progress=False)(IDS).logits
    np.testing.assert_allclose(numba, reference, atol=1e-4, rtol=0)


def rewrite(folder, tmp_path, name: str, edit) -> str:
    """A copy of the checkpoint with edit(tensors, metadata) applied to its file."""
    copy = shutil.copytree(folder, tmp_path / name)
    path = os.path.join(copy, "model.safetensors")
    stored, metadata = read_header(path)
    tensors = {n: t.read() for n, t in stored.items()}
    edit(tensors, metadata)
    save(path, tensors, metadata)
    return copy


def test_negative_control_scales_without_the_transpose_miss(saved, tmp_path):
    folder, expected = saved["llama", "int4"]

    def untransposed(tensors, metadata):                 # [OUT, G] bytes under the [G, OUT] shape
        for name, values in tensors.items():
            if name.endswith(("_weight_scale", "_weight_zero_point")):
                tensors[name] = np.ascontiguousarray(values.T).reshape(values.shape)

    logits = minilm.load(rewrite(folder, tmp_path, "untransposed", untransposed), progress=False)(IDS).logits
    assert np.abs(logits - expected).max() > 1e-2


Q_PROJ = "model.layers.0.self_attn.q_proj.weight"


def describe(**changes):
    def edit(tensors, metadata):
        description = json.loads(metadata[Q_PROJ])
        for key, value in changes.items():
            if key.startswith("_"):                      # the description's own keys
                description[key] = value
            else:
                description["_data"][key] = value
        metadata[Q_PROJ] = json.dumps(description)
    return edit


def add_part(tensors, metadata):
    tensors["model.layers.0.self_attn.q_proj._weight_act_pre_scale"] = np.ones(64, np.float32)


def drop_description(tensors, metadata):
    del metadata[Q_PROJ]


def float32_scale(tensors, metadata):
    name = "model.layers.0.self_attn.q_proj._weight_scale"
    tensors[name] = np.zeros(tensors[name].shape, np.float32)


@pytest.mark.parametrize("fmt, edit, message", [
    ("int4", describe(_type="Int4TilePackedTo4dTensor"), "q_proj.weight' is a torchao Int4TilePackedTo4dTensor"),
    ("int4", describe(block_size=[1, 48]), r"int4 block_size=\[1, 48\]"),
    ("int4", describe(shape=[64, 32]), r"says shape \[64, 32\], expected \[64, 64\]"),
    ("int4", describe(activation_dtype={"_type": "torch.dtype", "_data": "float8_e4m3fn"}), "activation_dtype"),
    ("int4", add_part, "part 'act_pre_scale'"),
    ("int4", drop_description, "without their description"),
    ("int4", describe(_type="Int4Tensor", _tensor_data_names=5), "_tensor_data_names is not a list"),
    ("int4", describe(_type=["Int4Tensor"]), "not an object with _type and _data"),
    ("int4", lambda tensors, metadata: metadata.update({Q_PROJ: "[" * 100000}), "is not JSON .RecursionError."),
    ("int4", float32_scale, r"_weight_scale is F32\[2, 64\], expected BF16\[2, 64\]"),
    ("int8", describe(act_quant_kwargs={"_type": "QuantizeTensorToInt8Kwargs", "_data": {}}),
     "dynamic activation quantization"),
    ("int8", describe(block_size=[1, 32]), "one scale per row"),
])
def test_what_minilm_cannot_read_is_refused_by_name(saved, tmp_path, fmt, edit, message):
    folder = rewrite(saved["llama", fmt][0], tmp_path, "edited", edit)
    with pytest.raises(WeightsError, match=message):
        minilm.load(folder, progress=False)


@pytest.mark.parametrize("config_type, message", [("Float8WeightOnlyConfig", "torchao Float8WeightOnlyConfig is not "
                                                  "supported"), (["Int4WeightOnlyConfig"], "is not a config object")])
def test_other_torchao_configs_are_refused_by_name(saved, tmp_path, config_type, message):
    folder = shutil.copytree(saved["llama", "int4"][0], tmp_path / "float8")
    path = os.path.join(folder, "config.json")
    config = json.load(open(path))
    config["quantization_config"]["quant_type"]["default"]["_type"] = config_type
    json.dump(config, open(path, "w"))
    with pytest.raises(ConfigError, match=message):
        minilm.load(folder, progress=False)


def test_a_layer_torchao_left_in_float_loads_as_float(tmp_path):
    """modules_to_not_convert: that layer is a plain tensor beside the others' parts (and, the list
    given, transformers quantizes lm_head too: a quantized head loads as well)."""
    source = tiny_checkpoint("llama", os.path.join(tmp_path, "source"))
    skipped = "model.layers.0.self_attn.q_proj"
    model = hf_model(source, quantization_config=transformers.TorchAoConfig(Int8WeightOnlyConfig(),
                                                                           modules_to_not_convert=[skipped]))
    model.save_pretrained(tmp_path / "saved")
    ours = minilm.load(str(tmp_path / "saved"), progress=False)
    assert ours.weights[skipped + ".weight"].format == "float32"
    assert ours.weights["model.layers.0.self_attn.k_proj.weight"].format == "int8"
    assert ours.weights["lm_head.weight"].format == "int8"
    np.testing.assert_allclose(ours(IDS).logits, logits_of(model), atol=1e-4, rtol=0)


def test_a_sharded_checkpoint_with_parts_in_two_shards_loads_the_same(saved, tmp_path):
    """transformers shards by size, so one weight's parts can land in two files; each shard carries
    the metadata. The logits equal the single file's bit for bit."""
    folder, _ = saved["llama", "int4"]
    stored, metadata = read_header(os.path.join(folder, "model.safetensors"))
    names = list(stored)
    split = names.index("model.layers.0.mlp.down_proj._weight_scale")     # qdata before, scale after
    sharded = shutil.copytree(folder, tmp_path / "sharded", ignore=shutil.ignore_patterns("model.safetensors"))
    weight_map = {}
    for i, part in enumerate((names[:split], names[split:])):
        shard = f"model-{i + 1:05d}-of-00002.safetensors"
        save(os.path.join(sharded, shard), {n: stored[n].read() for n in part}, metadata)
        weight_map.update({n: shard for n in part})
    with open(os.path.join(sharded, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    whole = minilm.load(folder, progress=False)(IDS).logits
    assert np.array_equal(minilm.load(str(sharded), progress=False)(IDS).logits, whole)


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("fmt, part", [("int8", "_weight_scale"), ("int4", "_weight_scale"),
                                       ("int4", "_weight_zero_point")])
def test_a_non_finite_scale_is_refused_copied_or_mapped(saved, tmp_path, fmt, part, mmap):
    """A NaN (float32) or Inf (bfloat16 bits) in one scale or zero point: refused at load, naming it,
    also when the scales are used in place from the map (issue 23: they were absorbed)."""
    def spoil(tensors, metadata):
        values = tensors[f"model.layers.1.mlp.up_proj.{part}"]
        values.flat[3] = 0x7F80 if values.dtype == np.uint16 else np.nan      # bf16 +inf bits / float32 NaN
    folder = rewrite(saved["llama", fmt][0], tmp_path, "bad", spoil)
    with pytest.raises(WeightsError, match=f"up_proj.{part}' contains NaN or Inf"):
        minilm.load(folder, progress=False, mmap=mmap)


def test_quantizing_an_already_quantized_checkpoint_is_refused(saved):
    with pytest.raises(ValueError, match="already quantized .int4, torchao."):
        minilm.load(saved["llama", "int4"][0], quantize="q4_0", progress=False)


@pytest.mark.parametrize("fmt", ["int4", "int8"])
def test_random_checkpoint_writes_what_transformers_loads(tmp_path, fmt):
    """The writer's layout is transformers': it loads the file strictly, its quantized tensors hold
    minilm's arrays, and (int8, which torchao runs on the CPU) its logits are minilm's."""
    folder = random_checkpoint(tiny_config("llama"), tmp_path / fmt, dtype=fmt)
    model = minilm.load(folder, progress=False)
    ours = model.weights["model.layers.1.mlp.gate_proj.weight"]
    assert ours.format == fmt and ours.shape == (128, 64)
    theirs, info = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32, device_map="cpu",
                                                                 output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    weight = theirs.model.layers[1].mlp.gate_proj.weight
    assert np.array_equal(weight.qdata.numpy().view(ours.codes.dtype), ours.codes)
    if fmt == "int4":
        assert np.array_equal(weight.scale.view(torch.int16).numpy().view(np.uint16), ours.scale.T)
        assert np.array_equal(weight.zero_point.view(torch.int16).numpy().view(np.uint16), ours.zero.T)
    else:
        assert np.array_equal(weight.scale.numpy().reshape(-1), ours.scale)
        np.testing.assert_allclose(model(IDS).logits, logits_of(theirs), atol=1e-4, rtol=0)
