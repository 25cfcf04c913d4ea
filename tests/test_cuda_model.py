"""Whole models on the CUDA kernels equal the NumPy reference (which test_parity.py ties to transformers).

On the CPU harness ("cuda-emulated", every launch checked in both thread
orders) and, when CuPy sees a GPU, on the device ("cuda"): logits within 1e-4
on a left-padded batch and through cached decoding across the Cohere2 window,
identical greedy generations, and bfloat16 weight storage equal to the
reference run on the same rounded weights. "cuda-glue" runs the GPU backend's
Python glue with a strict stand-in for CuPy, to catch host arrays reaching it.
"""
import numpy as np
import pytest

import cupy  # noqa: F401

import minilm  # noqa: E402
from minilm.cuda import gpu_available  # noqa: E402
from minilm.ops.contract import OPS, build_backend  # noqa: E402
from conftest import assert_logits_close, incremental_logits, left_padded_batch, random_ids  # noqa: E402

FAMILIES = {
    "llama": dict(num_attention_heads=6, num_key_value_heads=2, hidden_size=96),    # GQA, head_dim 16
    "llama-mqa-bias": dict(num_key_value_heads=1, attention_bias=True, mlp_bias=True),
    "cohere": dict(use_qk_norm=True),
    "cohere2": dict(sliding_window=4),
}


# --- the GPU glue without a GPU -------------------------------------------------------
# CuPy refuses numpy arrays in most functions and in kernel launches. To check that
# the "cuda" backend's glue never hands it host arrays, run it with a stand-in for
# cupy that refuses them too, over the harness's kernels.

class DeviceArray(np.ndarray):
    """A numpy array standing in for a cupy array."""


def _device_only(array, where):
    if not isinstance(array, DeviceArray):
        raise TypeError(f"{where} got a host {type(array).__name__}; CuPy needs a device array")


class StrictCupy:
    def asarray(self, array, dtype=None):
        return np.array(array, dtype=dtype, copy=not isinstance(array, DeviceArray)).view(DeviceArray)

    def ascontiguousarray(self, array, dtype=None):
        _device_only(array, "ascontiguousarray")
        return np.ascontiguousarray(array, dtype=dtype).view(DeviceArray)

    def broadcast_to(self, array, shape):
        _device_only(array, "broadcast_to")
        return np.broadcast_to(array, shape).view(DeviceArray)

    def empty(self, shape, dtype):
        return np.empty(shape, dtype=dtype).view(DeviceArray)

    def asnumpy(self, array):
        return np.asarray(array).view(np.ndarray).copy()


class StrictModule:
    def __init__(self, module):
        self.module = module

    def get_function(self, name):
        kernel = self.module.get_function(name)

        def launch(grid, block, args, shared_mem=0):
            for arg in args:
                if isinstance(arg, np.ndarray):
                    _device_only(arg, f"kernel {name}")
            kernel(grid, block, args, shared_mem=shared_mem)
        return launch


def gpu_glue_backend(emulated=False, **options):
    from minilm.cuda.backend import CudaBackend
    options.setdefault("check_thread_order", False)   # the kernels are checked by the other runs
    backend = CudaBackend(emulated=True, **options)
    backend.name, backend.emulated, backend.xp = "cuda", False, StrictCupy()
    build = backend._new_module
    backend._new_module = lambda code, names: StrictModule(build(code, names))
    backend._no_bias = backend.asarray(np.zeros(1, dtype=np.float32))
    return build_backend("cuda", {op: getattr(backend, op) for op in OPS})


@pytest.fixture(params=["cuda-emulated", "cuda-glue", "cuda"])
def cuda_name(request, monkeypatch):
    if request.param == "cuda-glue":
        monkeypatch.setattr("minilm.cuda.backend.make_cuda_backend", gpu_glue_backend)
        return "cuda"
    if request.param == "cuda" and not gpu_available():
        pytest.skip("no GPU visible to CuPy: the cuda-emulated run covers the same kernels")
    return request.param


def load_pair(tiny_model, name, backend, **options):
    family = name.split("-")[0]
    _, folder = tiny_model(family, **FAMILIES[name])
    reference = minilm.load(folder, backend="numpy", progress=False, **options)
    cuda = minilm.load(folder, backend=backend, progress=False, **options)
    assert cuda.backend.name == backend
    return reference, cuda





@pytest.mark.parametrize("name", list(FAMILIES))
def test_logits_forward_and_cached_decoding(tiny_model, cuda_name, name):
    reference, cuda = load_pair(tiny_model, name, cuda_name)
    ids, mask = left_padded_batch(length=14)
    keep = mask.astype(bool)
    assert_logits_close(cuda(ids, attention_mask=mask).logits, reference(ids, attention_mask=mask).logits, keep)
    # Prefill 5 (longer than the cohere2 window of 4), then decode through positions W+1 .. 3W+1.
    assert_logits_close(incremental_logits(cuda, ids, mask, 5), incremental_logits(reference, ids, mask, 5), keep)


@pytest.mark.parametrize("name", ["llama", "cohere2"])
def test_greedy_generation_equal(tiny_model, cuda_name, name):
    reference, cuda = load_pair(tiny_model, name, cuda_name)
    ids = random_ids(1, 7, seed=3)
    expected = reference.generate(ids, max_new_tokens=12, eos_token_id=[])
    np.testing.assert_array_equal(cuda.generate(ids, max_new_tokens=12, eos_token_id=[]), expected)


@pytest.mark.parametrize("name", ["llama", "cohere2"])
def test_bf16_weights_equal_reference_on_rounded_weights(tiny_model, cuda_name, name):
    # The reference decodes the same bf16 weights the kernels widen.
    reference, cuda = load_pair(tiny_model, name, cuda_name, weight_dtype="bfloat16")
    stored = cuda.backend.to_numpy(cuda.weights["model.layers.0.mlp.up_proj.weight"].data)
    assert stored.dtype == np.uint16, "bf16 storage was not used"
    ids, mask = left_padded_batch(length=11)
    keep = mask.astype(bool)
    assert_logits_close(cuda(ids, attention_mask=mask).logits, reference(ids, attention_mask=mask).logits, keep)
    assert_logits_close(incremental_logits(cuda, ids, mask, 4), incremental_logits(reference, ids, mask, 4), keep)
