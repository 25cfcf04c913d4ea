"""NaN never becomes an answer (issue 23).

Attention propagates a NaN score row as transformers' softmax does (expectations from
transformers' own `eager_attention_forward`), on every backend; NaN/Inf in stored scales is
refused at load naming the tensor; NaN in a memory-mapped float matrix is named at the first
forward whose logits it reaches.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from minilm.ops import attention as ref_attention
from minilm.ops import numba_attention
from tests.hostile_helpers import time_limit  # noqa: F401  (autouse fixture)


def _cuda_attention(emulated: bool):
    pytest.importorskip("cupy")
    from minilm.cuda import gpu_available
    from minilm.cuda.backend import CudaBackend
    if not emulated and not gpu_available():
        pytest.skip("no GPU visible to CuPy: the cuda-emulated run covers the kernel")
    backend = CudaBackend(emulated=emulated)

    def attention(q, k, v, mask, scale):
        args = (backend.asarray(a) for a in (q, k, v, mask))
        return backend.to_numpy(backend.attention(*args, scale))

    def probs(q, k, mask, scale):
        return backend.to_numpy(backend.attention_probs(*(backend.asarray(a) for a in (q, k, mask)), scale))
    return attention, probs


def _backend_ops(name):
    if name == "numpy":
        return ref_attention.attention, ref_attention.attention_probs
    if name == "numba":
        return numba_attention.attention, numba_attention.attention_probs
    return _cuda_attention(emulated=name == "cuda-emulated")


def transformers_attention(q, k, v, mask, scale):
    """transformers' eager attention (finfo.min additive mask) on minilm's layouts."""
    from transformers.models.llama.modeling_llama import eager_attention_forward

    class Module(torch.nn.Module):
        num_key_value_groups = q.shape[2] // k.shape[2]
    additive = torch.where(torch.from_numpy(mask)[:, None], 0.0, torch.finfo(torch.float32).min)
    out, weights = eager_attention_forward(Module().eval(), *(torch.from_numpy(a).transpose(1, 2) for a in (q, k, v)),
                                           additive, scale)
    return out.numpy(), weights.numpy()


def nan_inputs():
    """B=2, T=S=6, H=4, KV=2: a NaN in one query (one row NaN), a NaN in the first key of batch 1's
    kv head 1 (every row of heads 2-3 in batch 1 sees it), batch 0 left-padded by one (row 0 sees nothing)."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 6, h, 8)).astype(np.float32) for h in (4, 2, 2))
    q[0, 3, 1, 5] = np.nan
    k[1, 0, 1, 2] = np.nan
    valid = np.ones((2, 6), bool)
    valid[0, 0] = False
    mask = ref_attention.attention_mask(np.arange(6), np.arange(6), valid)
    return q, k, v, mask


def assert_same_with_nan(got, expected):
    """Same NaN positions, and the finite values within 1e-4."""
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    finite = ~np.isnan(expected)
    assert np.abs(got[finite] - expected[finite]).max() < 1e-4


@pytest.mark.parametrize("backend", ["numpy", "numba", "cuda-emulated", "cuda"])
def test_attention_propagates_nan_like_transformers(backend):
    attention, probs = _backend_ops(backend)
    q, k, v, mask = nan_inputs()
    expected_out, expected_probs = transformers_attention(q, k, v, mask, 0.35)
    seen = mask.any(-1)                                                # [B, T] rows with a visible key
    assert np.isnan(expected_out[seen]).any() and not np.isnan(expected_out[seen]).all()   # both kinds of row
    got_out, got_probs = attention(q, k, v, mask, 0.35), probs(q, k, mask, 0.35)
    assert_same_with_nan(np.asarray(got_out)[seen], expected_out[seen])
    assert_same_with_nan(np.asarray(got_probs).transpose(0, 2, 1, 3)[seen],
                         expected_probs.transpose(0, 2, 1, 3)[seen])
    # A row that sees no key keeps sdpa's zeros (eager averages every value there: docs/semantics.md 6.2).
    assert not np.asarray(got_out)[0, 0].any() and not np.asarray(got_probs)[0, :, 0].any()


def test_nan_comparison_can_fail():
    """Negative control: the old behaviour (a NaN row turned into zeros) fails the comparison."""
    q, k, v, mask = nan_inputs()
    expected_out, _ = transformers_attention(q, k, v, mask, 0.35)
    zeroed = np.nan_to_num(expected_out, nan=0.0)
    with pytest.raises(AssertionError):
        assert_same_with_nan(zeroed, expected_out)


# --- stored scales: refused at load, naming the tensor ------------------------------------------

def _spoiled_smollm2_gguf(tmp_path, tensor: str, byte_offset: int, value: bytes) -> str:
    """A copy of the shipped SmolLM2 Q4_1 GGUF with `value` written into `tensor` at `byte_offset`."""
    import shutil
    from minilm.gguf_file import GGUFFile
    from tests.smollm2_gguf import PATH
    copy = str(tmp_path / "spoiled.gguf")
    shutil.copyfile(PATH, copy)
    reader = GGUFFile(copy)
    _, _, offset, _ = reader.tensors[tensor]
    with open(copy, "r+b") as f:
        f.seek(reader.data_start + offset + byte_offset)
        f.write(value)
    return copy


@pytest.mark.parametrize("byte_offset, value", [(20 * 7, np.float16(np.nan).tobytes()),       # block 7's d
                                                (20 * 7 + 2, np.float16(np.inf).tobytes())])  # block 7's m
def test_a_non_finite_gguf_block_scale_is_refused_at_load(tmp_path, byte_offset, value):
    """One Q4_1 block (20 bytes: fp16 d, fp16 m, 16 bytes of codes) of a q projection with a NaN scale
    or an Inf minimum: minilm.load refuses it naming the file and the tensor (it was absorbed)."""
    import minilm
    from minilm.errors import WeightsError
    path = _spoiled_smollm2_gguf(tmp_path, "blk.0.attn_q.weight", byte_offset, value)
    with pytest.raises(WeightsError, match=r"spoiled.gguf: tensor 'blk.0.attn_q.weight' has a NaN or Inf block scale"):
        minilm.load(path, progress=False)


def test_a_finite_change_to_the_same_block_loads(tmp_path):
    """Negative control: the same byte edited to a finite scale loads (the check reads scales, not codes)."""
    import minilm
    path = _spoiled_smollm2_gguf(tmp_path, "blk.0.attn_q.weight", 20 * 7, np.float16(0.5).tobytes())
    assert minilm.load(path, progress=False).config.num_hidden_layers == 30


# --- memory-mapped float matrices: named at the first forward they reach -----------------------

def _edit_tensor(folder, name, edit):
    """Rewrite one tensor of the folder's model.safetensors in place (same layout)."""
    from minilm.safetensors_file import read_header
    path = f"{folder}/model.safetensors"
    stored = read_header(path)[0][name]
    values = stored.read()
    edit(values)
    with open(path, "r+b") as f:
        f.seek(stored.offset)
        f.write(values.tobytes())


@pytest.fixture
def tiny(tmp_path):
    from minilm.testing import tiny_checkpoint
    return tiny_checkpoint("llama", str(tmp_path / "tiny"))


def test_a_nan_in_a_mapped_matrix_is_named_at_the_first_forward(tiny):
    import minilm
    from minilm.errors import WeightsError
    _edit_tensor(tiny, "model.layers.1.self_attn.q_proj.weight", lambda v: v.flat.__setitem__(5, np.nan))
    model = minilm.load(tiny, progress=False)                        # mapped: nothing read at load
    with pytest.raises(WeightsError, match=r"model.safetensors: tensor 'model.layers.1.self_attn.q_proj.weight' "
                                           "contains NaN or Inf"):
        model(np.array([[1, 2, 3]]), logits_to_keep=1)               # the NaN reaches the kept logits


def test_overflow_of_finite_weights_is_left_to_the_step_check(tiny):
    """Negative control: huge finite weights overflow into non-finite logits, but no stored tensor holds
    NaN, so the forward returns them and generate's step check stops (GenerationError, not WeightsError)."""
    import minilm
    from minilm.generate import GenerationError
    _edit_tensor(tiny, "model.norm.weight", lambda v: v.__imul__(np.float32(3e37)))
    model = minilm.load(tiny, progress=False)
    assert not np.isfinite(model(np.array([[1, 2, 3]])).logits).all()
    with pytest.raises(GenerationError):
        model.generate(np.array([[1, 2, 3]]), max_new_tokens=2)


def test_the_cli_names_the_nan_tensor_in_one_line(tmp_path):
    """`minilm generate` on a checkpoint whose mapped q_proj holds a NaN: exit 2 with one line naming the
    tensor (issue 23: a plausible answer and exit 0)."""
    from tests.chat_checkpoint import tiny_chat_checkpoint
    from tests.hostile_helpers import assert_one_line_error, run_cli
    folder = tiny_chat_checkpoint(tmp_path / "m")
    _edit_tensor(folder, "model.layers.0.self_attn.q_proj.weight", lambda v: v.flat.__setitem__(0, np.nan))
    result = run_cli("generate", "Hi", "--model", folder, "--backend", "numpy", "--max-new-tokens", "3")
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]                      # after the loading progress bar
    assert last.startswith("minilm: error: ")
    assert_one_line_error(last, "model.safetensors", "'model.layers.0.self_attn.q_proj.weight'",
                          "contains NaN or Inf")
