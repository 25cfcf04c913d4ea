// logit_scale.cu - Cohere's LM head multiplies the logits by logit_scale.
//
// Elementwise over all B*T*V logits with a grid-stride loop.
#include "common.cuh"

template <typename T>
__global__ void scale_logits(const T* __restrict__ logits, T* __restrict__ out, long long n, float scale) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        out[i] = from_float<T>(to_float(logits[i]) * scale);
    }
}
