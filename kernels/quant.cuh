// quant.cuh - the quantized weight formats as the kernels read them, and what quant.cu
// (exact mode) and quant_fast.cu (fast mode) share.
//
// One struct per format knows that format's bytes, so each kernel is written once for
// all of them. The arrays are a Weight's, as stored (minilm/formats/*.py draws each layout):
//
//   Q8_0, Q4_0, Q4_1  blocks  uint8 [OUT, IN/32, 34 | 18 | 20]: fp16 d (q4_1: then fp16 m), then the codes
//   Int8              codes   int8 [OUT, IN], scale float32 [OUT]
//   Int4              codes   uint8 [OUT, IN/2], weight 2i in the LOW nibble; scale, zero bf16 [OUT, groups]
//   Bnb4 (fp4, nf4)   codes   uint8 [OUT, IN/2], weight 2i in the HIGH nibble; absmax float32 [OUT, IN/64];
//                     and the format's 16-entry table
//
// Kernels walk a row in blocks of 32 weights (block b = weights 32b .. 32b+31). Every format has
//   decode(row, b, j)    the float32 value of weight j of block b: the NumPy decode's formula.
// The formats with a fast mode store an integer code c per weight and, per block, a scale d and
// (HAS_MIN) a minimum m, w = d * c + m. They also have
//   codes4(row, b, w)    the codes of weights 4w .. 4w+3 of block b, one byte each: what __dp4a takes
//   scale(row, b), minimum(row, b)
//   OFFSET               stored code minus the code the math uses (q4_0 stores n = c + 8; 0 elsewhere)
#pragma once
#include "common.cuh"

constexpr int QK = 32;             // weights per block
constexpr int GEMV_MAX_ROWS = 8;   // the backend sends up to this many rows of x to the GEMV kernels
constexpr int TILE = 32;           // the matmul kernels compute a TILE x TILE tile of out per block
constexpr int TILE_ROWS = 8;       // with TILE x TILE_ROWS threads; each owns TILE / TILE_ROWS rows
static_assert(TILE == QK, "a tile step is one block of every weight row");

// A Weight's arrays as the kernels receive them (arrays a format does not have point at a dummy).
struct QuantArrays {
    const unsigned char* codes;   // GGUF blocks, or the packed codes
    const void* scales;           // Int8 and Int4 scale, Bnb4 absmax
    const void* extra;            // Int4 zero, Bnb4 table
    int in_features;
    int group_blocks;             // Int4: blocks of 32 weights per scale group
};

// --- bytes -> numbers ----------------------------------------------------------------

__device__ __forceinline__ float half_at(const unsigned char* p) {
    return __half2float(__ushort_as_half(*reinterpret_cast<const unsigned short*>(p)));
}

__device__ __forceinline__ float bfloat16_bits_to_float(unsigned short bits) {
    return __uint_as_float((unsigned)bits << 16);   // bf16 is the top half of a float32
}

// 4 bytes at an address that is only 2-byte aligned (GGUF blocks are 18 or 34 bytes), little-endian.
__device__ __forceinline__ int load_int_2aligned(const unsigned char* p) {
    const unsigned short* halves = reinterpret_cast<const unsigned short*>(p);
    return (int)(halves[0] | ((unsigned)halves[1] << 16));
}

// Byte i (0..3) of a word of codes, sign-extended (nibble codes are 0..15 either way).
__device__ __forceinline__ int code_byte(int word, int i) { return (signed char)(word >> (8 * i)); }

// --- the formats ----------------------------------------------------------------------

// GGUF rows are arrays of BYTES-byte blocks.
template <int BYTES>
struct GgufBlocks {
    const unsigned char* blocks;
    int blocks_per_row;
    __device__ explicit GgufBlocks(const QuantArrays& a) : blocks(a.codes), blocks_per_row(a.in_features / QK) {}
    __device__ const unsigned char* block(int row, int b) const {
        return blocks + ((size_t)row * blocks_per_row + b) * BYTES;
    }
};

// q4_0 / q4_1 pack 32 nibbles in 16 bytes: byte i holds weight i in its LOW nibble and weight
// i + 16 in its HIGH nibble. So weights 4w .. 4w+3 are the low (w < 4) or high (w >= 4) nibbles
// of bytes 4(w % 4) .. 4(w % 4) + 3.
__device__ __forceinline__ int gguf_nibbles4(const unsigned char* nibbles, int w) {
    const int bytes = load_int_2aligned(nibbles + 4 * (w % 4));
    return (w < 4 ? bytes : bytes >> 4) & 0x0F0F0F0F;
}

struct Q8_0 : GgufBlocks<34> {   // | d fp16 | 32 x int8 |   w = d * q
    static constexpr int OFFSET = 0;
    static constexpr bool HAS_MIN = false;
    using GgufBlocks::GgufBlocks;
    __device__ int codes4(int row, int b, int w) const { return load_int_2aligned(block(row, b) + 2 + 4 * w); }
    __device__ float scale(int row, int b) const { return half_at(block(row, b)); }
    __device__ float minimum(int, int) const { return 0.0f; }
    __device__ float decode(int row, int b, int j) const {
        return code_byte(codes4(row, b, j / 4), j % 4) * scale(row, b);
    }
};

struct Q4_0 : GgufBlocks<18> {   // | d fp16 | 16 bytes of nibbles |   w = d * (n - 8)
    static constexpr int OFFSET = 8;
    static constexpr bool HAS_MIN = false;
    using GgufBlocks::GgufBlocks;
    __device__ int codes4(int row, int b, int w) const { return gguf_nibbles4(block(row, b) + 2, w); }
    __device__ float scale(int row, int b) const { return half_at(block(row, b)); }
    __device__ float minimum(int, int) const { return 0.0f; }
    __device__ float decode(int row, int b, int j) const {
        return scale(row, b) * (code_byte(codes4(row, b, j / 4), j % 4) - 8);
    }
};

struct Q4_1 : GgufBlocks<20> {   // | d fp16 | m fp16 | 16 bytes of nibbles |   w = d * n + m
    static constexpr int OFFSET = 0;
    static constexpr bool HAS_MIN = true;
    using GgufBlocks::GgufBlocks;
    __device__ int codes4(int row, int b, int w) const { return gguf_nibbles4(block(row, b) + 4, w); }
    __device__ float scale(int row, int b) const { return half_at(block(row, b)); }
    __device__ float minimum(int row, int b) const { return half_at(block(row, b) + 2); }
    __device__ float decode(int row, int b, int j) const {
        return scale(row, b) * code_byte(codes4(row, b, j / 4), j % 4) + minimum(row, b);
    }
};

struct Int8 {   // torchao int8: w = codes[o, k] * scale[o]
    static constexpr int OFFSET = 0;
    static constexpr bool HAS_MIN = false;
    const signed char* codes;
    const float* row_scale;
    int in_features;
    __device__ explicit Int8(const QuantArrays& a)
        : codes(reinterpret_cast<const signed char*>(a.codes)), row_scale(static_cast<const float*>(a.scales)),
          in_features(a.in_features) {}
    // exact mode takes any row length (a row may end in a partial block: callers stop at in_features)
    __device__ float decode(int row, int b, int j) const {
        return codes[(size_t)row * in_features + QK * b + j] * row_scale[row];
    }
    // fast mode needs IN % 32 == 0, so every word is 4-byte aligned
    __device__ int codes4(int row, int b, int w) const {
        return *reinterpret_cast<const int*>(codes + (size_t)row * in_features + QK * b + 4 * w);
    }
    __device__ float scale(int row, int) const { return row_scale[row]; }
    __device__ float minimum(int, int) const { return 0.0f; }
};

struct Int4 {   // torchao int4: w = q * scale + zero, q the signed nibble (-8..7), scale and zero per group
    // Fast mode follows the NumPy reference: Q4_1's arithmetic with n = q + 8, d = scale, m = zero - 8 * scale.
    static constexpr int OFFSET = 0;
    static constexpr bool HAS_MIN = true;
    const unsigned char* codes;
    const unsigned short* scales;   // bfloat16 bits
    const unsigned short* zeros;
    int in_features, group_blocks;
    __device__ explicit Int4(const QuantArrays& a)
        : codes(a.codes), scales(static_cast<const unsigned short*>(a.scales)),
          zeros(static_cast<const unsigned short*>(a.extra)), in_features(a.in_features),
          group_blocks(a.group_blocks) {}
    // A block of 32 weights is 16 bytes; byte i holds weight 2i in its LOW nibble, 2i + 1 in its HIGH one.
    __device__ const unsigned char* block(int row, int b) const {
        return codes + (size_t)row * (in_features / 2) + 16 * b;
    }
    __device__ int group(int row, int b) const {
        return row * (in_features / QK / group_blocks) + b / group_blocks;
    }
    __device__ float scale(int row, int b) const { return bfloat16_bits_to_float(scales[group(row, b)]); }
    __device__ float zero(int row, int b) const { return bfloat16_bits_to_float(zeros[group(row, b)]); }
    __device__ float minimum(int row, int b) const { return zero(row, b) - 8.0f * scale(row, b); }
    __device__ float decode(int row, int b, int j) const {
        const unsigned char byte = block(row, b)[j / 2];
        const int nibble = j % 2 == 0 ? byte & 0x0F : byte >> 4;
        const int q = (nibble ^ 8) - 8;   // sign-extend the 4-bit two's complement code
        return q * scale(row, b) + zero(row, b);
    }
    // Weights 4w .. 4w+3 are the nibbles low, high, low, high of bytes 2w and 2w + 1: spread them
    // to one byte each, then n = q + 8 is the nibble with its sign bit flipped.
    __device__ int codes4(int row, int b, int w) const {
        const unsigned char* p = block(row, b) + 2 * w;
        const unsigned v = p[0] | (p[1] << 8);
        const unsigned spread = (v & 0xF) | ((v >> 4) & 0xF) << 8 | ((v >> 8) & 0xF) << 16 | ((v >> 12) & 0xF) << 24;
        return (int)(spread ^ 0x08080808u);
    }
};

struct Bnb4 {   // bitsandbytes fp4 / nf4: w = table[n] * absmax, one absmax per 64 weights (exact mode only)
    const unsigned char* codes;
    const float* absmax;
    const float* table;             // 16 values, from minilm.formats.bnb.TABLES
    int in_features;
    __device__ explicit Bnb4(const QuantArrays& a)
        : codes(a.codes), absmax(static_cast<const float*>(a.scales)), table(static_cast<const float*>(a.extra)),
          in_features(a.in_features) {}
    __device__ float decode(int row, int b, int j) const {
        const int k = QK * b + j;
        const unsigned char byte = codes[(size_t)row * (in_features / 2) + k / 2];
        const int n = k % 2 == 0 ? byte >> 4 : byte & 0x0F;   // the FIRST weight of a pair is the HIGH nibble
        return table[n] * absmax[(size_t)row * (in_features / 64) + k / 64];
    }
};

// --- what the kernels of both modes end with -------------------------------------------

// GEMV: each lane holds partial sums for rows 0 .. rows-1 of x; sum them over the warp, add the bias.
__device__ __forceinline__ void store_gemv_rows(const float (&acc)[GEMV_MAX_ROWS], int o, const float* bias,
                                                float* out, int rows, int out_features, int has_bias) {
    const float bias_o = has_bias ? bias[o] : 0.0f;
#pragma unroll
    for (int m = 0; m < GEMV_MAX_ROWS; ++m) {
        if (m < rows) {   // rows is the same for the whole warp: every lane reaches the shuffles
            const float dot = warp_sum(acc[m]);
            if (threadIdx.x % 32 == 0) out[(size_t)m * out_features + o] = dot + bias_o;
        }
    }
}

// Matmul: thread (tx, ty) holds out[m0 + ty + i * TILE_ROWS, o0 + tx] for i < TILE / TILE_ROWS.
__device__ __forceinline__ void store_tile(const float (&acc)[TILE / TILE_ROWS], int m0, int o0, const float* bias,
                                           float* out, int rows, int out_features, int has_bias) {
    const int o = o0 + threadIdx.x;
    if (o >= out_features) return;
    const float bias_o = has_bias ? bias[o] : 0.0f;
#pragma unroll
    for (int i = 0; i < TILE / TILE_ROWS; ++i) {
        const int m = m0 + threadIdx.y + i * TILE_ROWS;
        if (m < rows) out[(size_t)m * out_features + o] = acc[i] + bias_o;
    }
}
