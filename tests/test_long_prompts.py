"""Long prompts: chunked prefill equals one forward over the whole prompt, the LM head can be
limited to the last positions, and memory-mapped weights equal copied ones bit for bit."""
import os

import numpy as np
import pytest

import minilm
from minilm.generate import prefill
from minilm.testing import tiny_checkpoint
from conftest import left_padded_batch

FAMILIES = {"llama": {}, "cohere": {"use_qk_norm": True}, "cohere2": {"sliding_window": 4}}


def prompt_positions(mask):
    return np.where(mask == 0, 0, np.cumsum(mask, axis=1) - 1)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("chunk", [1, 3, 5])
def test_chunked_prefill_equals_one_forward(family, backend, chunk):
    model = minilm.load(tiny_checkpoint(family, **FAMILIES[family]), backend=backend, progress=False)
    ids, mask = left_padded_batch(length=14, pad=3)          # 14 tokens: several windows of W=4
    positions = prompt_positions(mask)
    whole = model(ids, attention_mask=mask, cache=model.new_cache(2), position_ids=positions).logits[:, -1:]
    chunked = prefill(model, ids, mask, positions, model.new_cache(2), chunk=chunk)
    assert np.abs(chunked - whole).max() < 1e-5


def test_chunked_prefill_reports_progress_and_generates_the_same_tokens():
    model = minilm.load(tiny_checkpoint("cohere2"), backend="numba", progress=False)
    ids = np.random.default_rng(1).integers(3, 256, size=(1, 23))
    seen = []
    chunked = model.generate(ids, max_new_tokens=8, eos_token_id=[], prefill_chunk=5,
                             on_prefill_progress=lambda done, total: seen.append((done, total)))
    whole = model.generate(ids, max_new_tokens=8, eos_token_id=[], prefill_chunk=0)
    np.testing.assert_array_equal(chunked, whole)
    assert seen == [(5, 23), (10, 23), (15, 23), (20, 23), (23, 23)]


def test_length_dependent_rope_prefills_in_one_forward():
    rope = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    model = minilm.load(tiny_checkpoint("llama", rope_parameters=rope), backend="numpy", progress=False)
    calls = []
    ids = np.random.default_rng(2).integers(3, 256, size=(1, 9))
    prefill(model, ids, np.ones_like(ids), prompt_positions(np.ones_like(ids)), model.new_cache(1), chunk=2,
            on_progress=lambda done, total: calls.append(done))
    assert calls == [9]


def test_logits_to_keep_is_the_tail_of_all_logits():
    model = minilm.load(tiny_checkpoint("llama"), backend="numba", progress=False)
    ids = np.random.default_rng(3).integers(3, 256, size=(2, 7))
    full = model(ids).logits                  # 14 rows take the tiled matmul, 4 rows the GEMV: sums differ in order
    np.testing.assert_allclose(model(ids, logits_to_keep=2).logits, full[:, -2:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype,weight_dtype", [("float32", "float32"), ("bfloat16", "bfloat16")])
def test_memory_mapped_weights_equal_copied_weights_bit_for_bit(dtype, weight_dtype, tmp_path):
    folder = tiny_checkpoint("cohere2", tmp_path / "ckpt", dtype=dtype)
    mapped = minilm.load(folder, backend="numba", weight_dtype=weight_dtype, progress=False)
    copied = minilm.load(folder, backend="numba", weight_dtype=weight_dtype, mmap=False, progress=False)
    data = mapped.weights["model.layers.0.mlp.up_proj.weight"].data
    assert not data.flags.owndata and not data.flags.writeable           # a view of the file's pages
    assert copied.weights["model.layers.0.mlp.up_proj.weight"].data.flags.writeable
    ids = np.random.default_rng(4).integers(3, 256, size=(1, 9))
    np.testing.assert_array_equal(mapped(ids).logits, copied(ids).logits)


@pytest.mark.parametrize("change", ["truncate", "replace", "rewrite"])
def test_a_changed_weights_file_is_a_clear_error(change, tmp_path):
    folder = tiny_checkpoint("llama", tmp_path / "ckpt")
    model = minilm.load(folder, backend="numba", progress=False)
    ids = np.array([[5, 6, 7]])
    model(ids)
    path = os.path.join(folder, "model.safetensors")
    data = open(path, "rb").read()
    if change == "truncate":
        os.truncate(path, len(data) // 2)
    elif change == "replace":
        os.replace(tiny_checkpoint("llama", tmp_path / "other", seed=1) + "/model.safetensors", path)
    else:
        with open(path, "r+b") as f:                      # same size, same inode: only the time tells
            f.seek(len(data) - 4)
            f.write(b"\0\0\0\0")
        os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    with pytest.raises(minilm.WeightsError, match="model.safetensors: the weights file changed on disk"):
        model(ids)
    # A copied model does not care: its weights are in private memory.
    assert minilm.load(tiny_checkpoint("llama", tmp_path / "c2"), backend="numba", mmap=False, progress=False)(ids)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_bfloat16_kv_cache(family):
    folder = tiny_checkpoint(family, **FAMILIES[family])
    ids, mask = left_padded_batch(length=13, pad=2)
    keep = mask.astype(bool)
    runs = {}
    for backend in ("numpy", "numba"):
        model = minilm.load(folder, backend=backend, cache_dtype="bfloat16", progress=False)
        cache = model.new_cache(2)
        logits = [model(ids[:, :5], attention_mask=mask[:, :5], cache=cache).logits]
        logits += [model(ids[:, t:t + 1], attention_mask=mask[:, t:t + 1], cache=cache).logits for t in range(5, 13)]
        runs[backend] = np.concatenate(logits, axis=1)
        assert cache.layers[0].keys.dtype == np.uint16
    float32_cache = minilm.load(folder, backend="numpy", progress=False)
    cache = float32_cache.new_cache(2)
    exact = np.concatenate([float32_cache(ids[:, :5], attention_mask=mask[:, :5], cache=cache).logits] +
                           [float32_cache(ids[:, t:t + 1], attention_mask=mask[:, t:t + 1], cache=cache).logits
                            for t in range(5, 13)], axis=1)
    # The kernels read the same rounded keys and values: equal to the reference.
    assert np.abs(runs["numba"] - runs["numpy"])[keep].max() < 1e-4
    # The rounding itself moves logits a little (measured: docs/benchmarks.md); bounded, and not zero.
    error = np.abs(runs["numpy"] - exact)[keep].max() / np.abs(exact[keep]).max()
    assert 0 < error < 2e-2, error
    assert cache.bytes_per_token == 2 * minilm.load(folder, backend="numpy", cache_dtype="bfloat16",
                                                     progress=False).new_cache(1).bytes_per_token


def test_cuda_refuses_a_bfloat16_cache_by_name():
    model = minilm.load(tiny_checkpoint("llama"), backend="cuda-emulated", cache_dtype="bfloat16", progress=False)
    with pytest.raises(minilm.errors.UnsupportedFormatError, match="cache_dtype='bfloat16' runs on the numpy"):
        model.generate(np.array([[3, 4, 5]]), max_new_tokens=2)
    with pytest.raises(ValueError, match="cache_dtype='float8'"):
        minilm.load(tiny_checkpoint("llama"), cache_dtype="float8", progress=False)
