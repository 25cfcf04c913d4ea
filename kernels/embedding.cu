// embedding.cu - token ids -> rows of the embedding table (no sqrt(D) scaling).
//
// One block per token; threads copy the row, converting the table's storage
// type to float32 activations. An id outside the vocabulary is a bug upstream:
// assert, instead of silently reading another row or out of bounds.
#include "common.cuh"

template <typename T>
__global__ void embedding(const long long* __restrict__ ids, const T* __restrict__ table, float* __restrict__ out,
                          int vocab, int dim) {
    const long long id = ids[blockIdx.x];
    assert(id >= 0 && id < vocab);
    const T* row = table + id * dim;
    float* out_row = out + (size_t)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) out_row[i] = to_float(row[i]);
}
