// rope.cu - rotary position embedding, both pair layouts.
//
// x [B,T,H,HD] is rotated pair by pair with the angle of its token:
//     a' = a cos - b sin,   b' = b cos + a sin,   cos/sin [B,T,HD/2] (float32).
// Llama pairs (i, i + HD/2) ("half-split"); Cohere pairs (2i, 2i+1)
// ("interleaved"). Only the pair's indices differ, so one kernel serves both.
// One block per token (b, t); threads stride over its H * HD/2 pairs.
#include "common.cuh"

template <typename T>
__global__ void rope(const T* __restrict__ x, const float* __restrict__ cos, const float* __restrict__ sin,
                     T* __restrict__ out, int heads, int head_dim, int interleaved) {
    const int half = head_dim / 2;
    const size_t token = blockIdx.x;
    const float* token_cos = cos + token * half;
    const float* token_sin = sin + token * half;

    for (int p = threadIdx.x; p < heads * half; p += blockDim.x) {
        const int head = p / half, i = p % half;
        const int first = interleaved ? 2 * i : i;
        const int second = interleaved ? 2 * i + 1 : i + half;
        const size_t base = (token * heads + head) * head_dim;
        const float a = to_float(x[base + first]), b = to_float(x[base + second]);
        out[base + first] = from_float<T>(a * token_cos[i] - b * token_sin[i]);
        out[base + second] = from_float<T>(b * token_cos[i] + a * token_sin[i]);
    }
}
