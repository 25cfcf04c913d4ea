// layer_norm.cu - Cohere's LayerNorm: out = weight * (x - mean) / sqrt(var + eps), no bias.
//
// One block per row of D elements; two block-wide sums give the mean and then
// the (biased) variance of the centred values, which is as accurate as NumPy's
// two-pass formula. The weight broadcasts over leading axes: row r uses weight
// row r % weight_rows, so qk-norm (x [B,T,H,HD], weight [H,HD]) is the same
// kernel as the block norm (weight [D]). The multiply is in float32 before the
// cast back, as in transformers.
#include "common.cuh"

template <typename T, typename W>
__global__ void layer_norm(const T* __restrict__ x, const W* __restrict__ weight, T* __restrict__ out,
                           int dim, int weight_rows, float eps) {
    __shared__ float scratch[32];
    const T* row = x + (size_t)blockIdx.x * dim;
    const W* weight_row = weight + (size_t)(blockIdx.x % weight_rows) * dim;
    T* out_row = out + (size_t)blockIdx.x * dim;

    float sum = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) sum += to_float(row[i]);
    const float mean = block_sum(sum, scratch) / dim;

    float sum_sq = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float centred = to_float(row[i]) - mean;
        sum_sq += centred * centred;
    }
    const float inv_std = rsqrtf(block_sum(sum_sq, scratch) / dim + eps);

    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        out_row[i] = from_float<T>(to_float(weight_row[i]) * ((to_float(row[i]) - mean) * inv_std));
    }
}
