"""torchao 0.18's int4 quantizer as published (mslk is a CUDA library, so torchao cannot run it here):
the expected codes, scales and zero points for minilm's int4 tests."""
import numpy as np


def mslk_int4_row_quantize_zp(w, group_size):
    """torchao 0.18's Int4WeightOnlyConfig quantizer, mslk's int4_row_quantize_zp + pack_int4 +
    the bf16 cast of Int4Tensor.from_hp, transcribed in torch from the published source."""
    import torch
    x = torch.from_numpy(w).to(torch.float)
    chunks = torch.split(x, group_size, dim=-1)
    max_val = [c.amax(dim=1, keepdim=True) for c in chunks]
    min_val = [c.amin(dim=1, keepdim=True) for c in chunks]
    scales = [(mx - mn).clamp(min=1e-6) / 15 for mx, mn in zip(max_val, min_val)]
    zeros = [mn + s * 8 for mn, s in zip(min_val, scales)]
    out = [c.sub(mn).div(s).round().clamp_(0, 15) for c, mn, s in zip(chunks, min_val, scales)]
    out = torch.cat([(c - 8).to(torch.int8) for c in out], dim=-1)
    packed = torch.bitwise_or(torch.bitwise_and(out[:, ::2], 0xF), torch.bitwise_left_shift(out[:, 1::2], 4))
    return (packed.numpy().view(np.uint8), torch.cat(scales, -1).to(torch.bfloat16),
            torch.cat(zeros, -1).to(torch.bfloat16))
