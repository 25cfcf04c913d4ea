"""minilm.formats.bfloat16: the one float32 <-> bfloat16 conversion every backend uses."""
import numpy as np
import torch

from minilm.formats import quantize
from minilm.formats.bfloat16 import bfloat16_to_float32, to_bfloat16


def f32(bits):
    return np.array(bits, dtype=np.uint32).view(np.float32)


def test_round_to_nearest_even():
    x = f32([0x3F808000,    # exactly halfway, even upper half -> stays 0x3F80
             0x3F818000,    # halfway, odd upper half -> rounds up to 0x3F82
             0x3F808001,    # just above halfway -> up
             0x3F807FFF,    # just below halfway -> down
             0xBF818000,    # negative, halfway, odd -> 0xBF82
             0x7F7FFFFF])   # float32 max rounds to inf, like torch
    assert to_bfloat16(x).tolist() == [0x3F80, 0x3F82, 0x3F81, 0x3F80, 0xBF82, 0x7F80]


def test_nan_stays_a_nan_whatever_its_bits():
    # 0x7FFFFFFF would round (carry) into 0x8000 = -0.0 without the NaN rule.
    bits = to_bfloat16(f32([0x7FC00001, 0x7FFFFFFF, 0xFFFFFFFF, 0x7F800001]))
    assert bits.tolist() == [0x7FC0] * 4
    assert np.isnan(bfloat16_to_float32(bits)).all()


def test_matches_torch_and_widening_is_exact():
    w = np.concatenate([np.random.default_rng(9).standard_normal(4000).astype(np.float32) * 10.0 ** np.arange(-20, 20, 0.01)[:4000],
                        [0.0, -0.0, 1e-40, -1e-40, 3.4e38, np.inf, -np.inf]]).astype(np.float32)
    expected = torch.from_numpy(w).to(torch.bfloat16)
    bits = to_bfloat16(w)
    np.testing.assert_array_equal(bits, expected.view(torch.int16).numpy().view(np.uint16))
    np.testing.assert_array_equal(bfloat16_to_float32(bits), expected.float().numpy())


def test_large_arrays_convert_in_chunks_with_the_same_result():
    from minilm.formats import bfloat16
    w = np.random.default_rng(1).standard_normal((3, 1000)).astype(np.float32)
    whole = to_bfloat16(w)
    old, bfloat16.CHUNK = bfloat16.CHUNK, 7
    try:
        np.testing.assert_array_equal(to_bfloat16(w), whole)
    finally:
        bfloat16.CHUNK = old


def test_bfloat16_weight_decodes_to_the_rounded_values():
    w = np.random.default_rng(2).standard_normal((5, 9)).astype(np.float32)
    weight = quantize(w, "bfloat16")
    assert weight.data.dtype == np.uint16 and weight.shape == (5, 9)
    np.testing.assert_array_equal(weight.dequantize(), bfloat16_to_float32(to_bfloat16(w)))
