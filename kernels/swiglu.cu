// swiglu.cu - the gated MLP activation: out = silu(gate) * up, silu(g) = g / (1 + exp(-g)).
//
// Elementwise, so a grid-stride loop: any grid size covers any n, and the
// launcher can cap the grid. Math in float32, one rounding to T at the end.
#include "common.cuh"

template <typename T>
__global__ void swiglu(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ out, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const float g = to_float(gate[i]);
        out[i] = from_float<T>(g / (1.0f + expf(-g)) * to_float(up[i]));
    }
}
