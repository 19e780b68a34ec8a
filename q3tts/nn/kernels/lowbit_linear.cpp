// Low-bit linears for CPU decoding: y[M, N] = x[M, K] @ W[N, K]^T (+ bias).
//
// W is stored 4-bit (int4) or 8-bit (int8) per output channel and group of `group` inputs, with one
// fp16 scale per (channel, group); x is quantised per row and group to int8 on the fly, so every
// inner product is an integer dot product (AVX512-VNNI `vpdpbusd`: 64 u8 x s8 products per
// instruction) and only the per-group sums are scaled in float. Decoding reads every weight once
// per token, so it is bound by bytes moved: int4 moves half of int8's.
//
// Packed layout (see lowbit.py, which writes it): output channels in blocks of 16, and within a
// block the 16 channels' weights interleaved 4 inputs at a time, so one 64-byte load holds 4
// inputs of 16 channels and one vpdpbusd multiplies them by 4 broadcast activations:
//   int8: byte [n/16][k/4][n%16][k%4]                            = q + 128   (u8)
//   int4: byte [n/16][k/8][n%16][k%4], low nibble k%8 < 4, high nibble k%8 >= 4 = q + 8 (u4)
//   scales: fp16 [n/16][k/group][n%16]
// The unsigned offset (128 or 8) is removed per group with the activations' group sums.
//
// Registered as torch.ops.q3tts_lowbit.linear; the AVX-512 path is used when the compiler targets
// it (the module is built with -march=native on the machine that runs it), else a portable path.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && !defined(Q3TTS_PORTABLE)
#include <immintrin.h>
#define Q3TTS_AVX512 1
#elif defined(__AVX2__) && defined(__F16C__) && defined(__FMA__) && !defined(Q3TTS_PORTABLE)
#include <immintrin.h>
#define Q3TTS_AVX2 1  // most laptop CPUs: 256-bit, with AVX-VNNI's vpdpbusd where the CPU has it
#endif

namespace {

constexpr int kBlock = 16;  // output channels per block

struct QuantizedRows {
  std::vector<int8_t> q;      // [M, K]
  std::vector<float> scale;   // [M, K / group]
  std::vector<int32_t> sum;   // [M, K / group]: sum of q over the group, times the weight offset
};

// The unsigned offset the packed weights carry (see the layout above).
constexpr int32_t weight_offset(int64_t bits) { return bits == 4 ? 8 : 128; }

// Symmetric int8 per (row, group): the largest magnitude maps to 127. The AVX-512 path rounds the
// same way (to nearest even, the default mode nearbyint uses), so both give the same bytes.
inline void quantize_group(const float* src, int64_t group, int8_t* dst, float& scale, int32_t& sum, int32_t offset) {
  int64_t i = 0;
  float amax = 0.f;
#ifdef Q3TTS_AVX512
  __m512 vmax = _mm512_setzero_ps();
  for (; i + 16 <= group; i += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(src + i)));
  amax = _mm512_reduce_max_ps(vmax);
#endif
  for (; i < group; ++i) amax = std::max(amax, std::fabs(src[i]));
  const float inv = amax > 0.f ? 127.f / amax : 0.f;
  int32_t s = 0;
  i = 0;
#ifdef Q3TTS_AVX512
  __m512i vsum = _mm512_setzero_si512();
  const __m512 vinv = _mm512_set1_ps(inv);
  for (; i + 16 <= group; i += 16) {
    const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(src + i), vinv));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm512_cvtsepi32_epi8(v));
    vsum = _mm512_add_epi32(vsum, v);
  }
  s = _mm512_reduce_add_epi32(vsum);
#endif
  for (; i < group; ++i) {
    const int32_t v = static_cast<int32_t>(std::nearbyint(src[i] * inv));
    dst[i] = static_cast<int8_t>(v);
    s += v;
  }
  scale = amax / 127.f;
  sum = s * offset;
}

QuantizedRows quantize_rows(const float* x, int64_t M, int64_t K, int64_t group, int64_t bits) {
  const int64_t G = K / group;
  const int32_t offset = weight_offset(bits);
  QuantizedRows r{std::vector<int8_t>(M * K), std::vector<float>(M * G), std::vector<int32_t>(M * G)};
  // In parallel only for many rows (prefills, the codec's convolutions).
  at::parallel_for(0, M, M * K >= (1 << 16) ? 16 : M, [&](int64_t m_begin, int64_t m_end) {
    for (int64_t m = m_begin; m < m_end; ++m)
      for (int64_t g = 0; g < G; ++g)
        quantize_group(x + m * K + g * group, group, r.q.data() + m * K + g * group, r.scale[m * G + g],
                       r.sum[m * G + g], offset);
  });
  return r;
}

inline float half_to_float(uint16_t h) {
  return c10::detail::fp16_ieee_to_fp32_value(h);
}

// Portable path: the same integer arithmetic, one channel at a time.
void linear_portable(const QuantizedRows& xq, int64_t m0, int64_t m1, const uint8_t* w, const uint16_t* scales,
                     int64_t K, int64_t group, int bits, int64_t nb0, int64_t nb1, float* y, int64_t N) {
  const int64_t G = K / group;
  const int64_t block_bytes = bits == 4 ? K * kBlock / 2 : K * kBlock;
  for (int64_t nb = nb0; nb < nb1; ++nb) {
    const uint8_t* wb = w + nb * block_bytes;
    const uint16_t* sb = scales + nb * G * kBlock;
    for (int64_t m = m0; m < m1; ++m) {
      const int8_t* xr = xq.q.data() + m * K;
      for (int lane = 0; lane < kBlock; ++lane) {
        float acc = 0.f;
        for (int64_t g = 0; g < G; ++g) {
          int32_t dot = 0;
          for (int64_t k = g * group; k < (g + 1) * group; ++k) {
            int32_t u;
            if (bits == 4) {
              const uint8_t byte = wb[((k / 8) * kBlock + lane) * 4 + (k % 4)];
              u = (k % 8) < 4 ? (byte & 0xF) : (byte >> 4);
            } else {
              u = wb[((k / 4) * kBlock + lane) * 4 + (k % 4)];
            }
            dot += u * xr[k];
          }
          acc += half_to_float(sb[g * kBlock + lane]) * xq.scale[m * G + g] * float(dot - xq.sum[m * G + g]);
        }
        y[m * N + nb * kBlock + lane] = acc;
      }
    }
  }
}

#ifdef Q3TTS_AVX512
// MB rows x NB channel blocks per pass: NB independent accumulator chains hide vpdpbusd's latency
// at one row, and the NB blocks' weights are reused from registers for every row.
template <int MB, int NB, int BITS>
void linear_tile(const QuantizedRows& xq, int64_t m0, const uint8_t* w, const uint16_t* scales, int64_t K,
                 int64_t group, int64_t nb0, float* y, int64_t N) {
  const int64_t G = K / group;
  const int64_t block_bytes = BITS == 4 ? K * kBlock / 2 : K * kBlock;
  const int64_t loads_per_group = BITS == 4 ? group / 8 : group / 4;
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  __m512 acc[MB][NB];
  for (int m = 0; m < MB; ++m)
    for (int b = 0; b < NB; ++b) acc[m][b] = _mm512_setzero_ps();
  const int8_t* xrow[MB];
  for (int m = 0; m < MB; ++m) xrow[m] = xq.q.data() + (m0 + m) * K;
  for (int64_t g = 0; g < G; ++g) {
    __m512i dot[MB][NB];
    for (int m = 0; m < MB; ++m)
      for (int b = 0; b < NB; ++b) dot[m][b] = _mm512_setzero_si512();
    for (int64_t j = 0; j < loads_per_group; ++j) {
      const int64_t step = g * loads_per_group + j;  // index of the 64-byte load within the block
      // The activations' 4-byte groups, broadcast once and used for every block.
      __m512i x_lo[MB], x_hi[MB];
      for (int m = 0; m < MB; ++m) {
        int32_t v;
        std::memcpy(&v, xrow[m] + step * (BITS == 4 ? 8 : 4), 4);
        x_lo[m] = _mm512_set1_epi32(v);
        if (BITS == 4) {
          std::memcpy(&v, xrow[m] + step * 8 + 4, 4);
          x_hi[m] = _mm512_set1_epi32(v);
        }
      }
      for (int b = 0; b < NB; ++b) {
        const __m512i wv = _mm512_loadu_si512(w + (nb0 + b) * block_bytes + step * 64);
        if (BITS == 4) {
          const __m512i lo = _mm512_and_si512(wv, low4);
          const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(wv, 4), low4);
          for (int m = 0; m < MB; ++m) {
            dot[m][b] = _mm512_dpbusd_epi32(dot[m][b], lo, x_lo[m]);
            dot[m][b] = _mm512_dpbusd_epi32(dot[m][b], hi, x_hi[m]);
          }
        } else {
          for (int m = 0; m < MB; ++m) dot[m][b] = _mm512_dpbusd_epi32(dot[m][b], wv, x_lo[m]);
        }
      }
    }
    for (int b = 0; b < NB; ++b) {
      const __m512 ws = _mm512_cvtph_ps(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales + ((nb0 + b) * G + g) * kBlock)));
      for (int m = 0; m < MB; ++m) {
        const int64_t mg = (m0 + m) * G + g;
        const __m512i centred = _mm512_sub_epi32(dot[m][b], _mm512_set1_epi32(xq.sum[mg]));
        acc[m][b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(centred), _mm512_mul_ps(ws, _mm512_set1_ps(xq.scale[mg])),
                                    acc[m][b]);
      }
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int b = 0; b < NB; ++b) _mm512_storeu_ps(y + (m0 + m) * N + (nb0 + b) * kBlock, acc[m][b]);
}

template <int BITS>
void linear_avx512(const QuantizedRows& xq, int64_t m0, int64_t m1, const uint8_t* w, const uint16_t* scales,
                   int64_t K, int64_t group, int64_t nb0, int64_t nb1, float* y, int64_t N) {
  // One row: 4 blocks in flight. Several rows: Q3_MB rows x Q3_NB blocks.
  int64_t nb = nb0;
  if (m1 - m0 == 1) {
    for (; nb + 4 <= nb1; nb += 4) linear_tile<1, 4, BITS>(xq, m0, w, scales, K, group, nb, y, N);
    for (; nb < nb1; ++nb) linear_tile<1, 1, BITS>(xq, m0, w, scales, K, group, nb, y, N);
    return;
  }
// 4 rows x 3 blocks: 12 accumulators and 12 dot registers; the best of 4x2, 8x1, 6x2, 2x4 and 4x3
// on 3072x1024 at 4-128 rows (286-323 GMAC/s at 128 rows on 2 threads, vs 213-285 for the others).
#ifndef Q3_MB
#define Q3_MB 4
#define Q3_NB 3
#endif
  for (; nb + Q3_NB <= nb1; nb += Q3_NB) {
    int64_t m = m0;
    for (; m + Q3_MB <= m1; m += Q3_MB) linear_tile<Q3_MB, Q3_NB, BITS>(xq, m, w, scales, K, group, nb, y, N);
    for (; m + 2 <= m1; m += 2) linear_tile<2, Q3_NB, BITS>(xq, m, w, scales, K, group, nb, y, N);
    for (; m < m1; ++m) linear_tile<1, Q3_NB, BITS>(xq, m, w, scales, K, group, nb, y, N);
  }
  // The last one or two blocks of this range, still 4 rows at a time.
  for (; nb < nb1; ++nb) {
    int64_t m = m0;
    for (; m + 4 <= m1; m += 4) linear_tile<4, 1, BITS>(xq, m, w, scales, K, group, nb, y, N);
    for (; m < m1; ++m) linear_tile<1, 1, BITS>(xq, m, w, scales, K, group, nb, y, N);
  }
}
#endif

#ifdef Q3TTS_AVX2
// The same packed layout in two 256-bit halves (channels 0-7 and 8-15 of a block).
inline __m256i dot_u8s8(__m256i acc, __m256i u, __m256i s) {
#ifdef __AVXVNNI__
  return _mm256_dpbusd_avx_epi32(acc, u, s);
#else
  // u <= 15 here (int4), so the pair sums of maddubs stay far inside int16.
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

// q8 without VNNI: maddubs would saturate on u8 up to 255, so multiply |x| by the signed weights
// carrying x's sign, which sums q * x directly (the caller adds back the offset term).
inline __m256i dot_q8(__m256i acc, __m256i u, __m256i x) {
#ifdef __AVXVNNI__
  return _mm256_dpbusd_avx_epi32(acc, u, x);
#else
  const __m256i q = _mm256_xor_si256(u, _mm256_set1_epi8(static_cast<char>(0x80)));
  const __m256i prod = _mm256_maddubs_epi16(_mm256_abs_epi8(x), _mm256_sign_epi8(q, x));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(prod, _mm256_set1_epi16(1)));
#endif
}

template <int MB, int NB, int BITS>
void linear_tile_avx2(const QuantizedRows& xq, int64_t m0, const uint8_t* w, const uint16_t* scales, int64_t K,
                      int64_t group, int64_t nb0, float* y, int64_t N) {
  const int64_t G = K / group;
  const int64_t block_bytes = BITS == 4 ? K * kBlock / 2 : K * kBlock;
  const int64_t loads_per_group = BITS == 4 ? group / 8 : group / 4;
  const __m256i low4 = _mm256_set1_epi8(0x0F);
#if defined(__AVXVNNI__)
  constexpr bool kSignedDot = false;
#else
  constexpr bool kSignedDot = BITS == 8;  // dot_q8 sums q * x, without the offset
#endif
  __m256 acc[MB][NB][2];
  for (int m = 0; m < MB; ++m)
    for (int b = 0; b < NB; ++b) acc[m][b][0] = acc[m][b][1] = _mm256_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    __m256i dot[MB][NB][2];
    for (int m = 0; m < MB; ++m)
      for (int b = 0; b < NB; ++b) dot[m][b][0] = dot[m][b][1] = _mm256_setzero_si256();
    for (int64_t j = 0; j < loads_per_group; ++j) {
      const int64_t step = g * loads_per_group + j;
      for (int b = 0; b < NB; ++b) {
        const uint8_t* src = w + (nb0 + b) * block_bytes + step * 64;
        for (int half = 0; half < 2; ++half) {
          const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 32 * half));
          for (int m = 0; m < MB; ++m) {
            const int8_t* xr = xq.q.data() + (m0 + m) * K;
            int32_t a;
            std::memcpy(&a, xr + step * (BITS == 4 ? 8 : 4), 4);
            if (BITS == 4) {
              int32_t c;
              std::memcpy(&c, xr + step * 8 + 4, 4);
              dot[m][b][half] = dot_u8s8(dot[m][b][half], _mm256_and_si256(wv, low4), _mm256_set1_epi32(a));
              dot[m][b][half] = dot_u8s8(dot[m][b][half], _mm256_and_si256(_mm256_srli_epi16(wv, 4), low4),
                                         _mm256_set1_epi32(c));
            } else {
              dot[m][b][half] = dot_q8(dot[m][b][half], wv, _mm256_set1_epi32(a));
            }
          }
        }
      }
    }
    for (int b = 0; b < NB; ++b) {
      const uint16_t* sc = scales + ((nb0 + b) * G + g) * kBlock;
      for (int half = 0; half < 2; ++half) {
        const __m256 ws = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + 8 * half)));
        for (int m = 0; m < MB; ++m) {
          const int64_t mg = (m0 + m) * G + g;
          const __m256i centred =
              kSignedDot ? dot[m][b][half] : _mm256_sub_epi32(dot[m][b][half], _mm256_set1_epi32(xq.sum[mg]));
          acc[m][b][half] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(centred),
                                            _mm256_mul_ps(ws, _mm256_set1_ps(xq.scale[mg])), acc[m][b][half]);
        }
      }
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int b = 0; b < NB; ++b)
      for (int half = 0; half < 2; ++half)
        _mm256_storeu_ps(y + (m0 + m) * N + (nb0 + b) * kBlock + 8 * half, acc[m][b][half]);
}

template <int BITS>
void linear_avx2(const QuantizedRows& xq, int64_t m0, int64_t m1, const uint8_t* w, const uint16_t* scales,
                 int64_t K, int64_t group, int64_t nb0, int64_t nb1, float* y, int64_t N) {
  // 16 ymm registers: 1 row x 2 blocks or 2 rows x 1 block keep 8 accumulators and 8 dot sums.
  int64_t nb = nb0;
  if (m1 - m0 == 1) {
    for (; nb + 2 <= nb1; nb += 2) linear_tile_avx2<1, 2, BITS>(xq, m0, w, scales, K, group, nb, y, N);
    for (; nb < nb1; ++nb) linear_tile_avx2<1, 1, BITS>(xq, m0, w, scales, K, group, nb, y, N);
    return;
  }
  for (; nb < nb1; ++nb) {
    int64_t m = m0;
    for (; m + 2 <= m1; m += 2) linear_tile_avx2<2, 1, BITS>(xq, m, w, scales, K, group, nb, y, N);
    for (; m < m1; ++m) linear_tile_avx2<1, 1, BITS>(xq, m, w, scales, K, group, nb, y, N);
  }
}
#endif

// Rows [m0, m1) x blocks [nb0, nb1) of y = x @ W^T, on the best path this build has.
void linear_blocks(const QuantizedRows& xq, int64_t m0, int64_t m1, const uint8_t* w, const uint16_t* s, int64_t K,
                   int64_t group, int bits, int64_t nb0, int64_t nb1, float* y, int64_t N) {
#if defined(Q3TTS_AVX512)
  if (bits == 4) linear_avx512<4>(xq, m0, m1, w, s, K, group, nb0, nb1, y, N);
  else linear_avx512<8>(xq, m0, m1, w, s, K, group, nb0, nb1, y, N);
#elif defined(Q3TTS_AVX2)
  if (bits == 4) linear_avx2<4>(xq, m0, m1, w, s, K, group, nb0, nb1, y, N);
  else linear_avx2<8>(xq, m0, m1, w, s, K, group, nb0, nb1, y, N);
#else
  linear_portable(xq, m0, m1, w, s, K, group, bits, nb0, nb1, y, N);
#endif
}

struct Packed {
  const uint8_t* w;
  const uint16_t* s;
  int64_t N, K;
};

struct Output {
  Packed p;
  float* y;  // [R, N]
};

Packed packed_of(const at::Tensor& w, const at::Tensor& s, int64_t K, int bits) {
  const int64_t N = (bits == 4 ? w.numel() * 2 : w.numel()) / K;
  return Packed{w.data_ptr<uint8_t>(), reinterpret_cast<const uint16_t*>(s.data_ptr<at::Half>()), N, K};
}

// y_j = x @ W_j^T for every output j, split over threads as one parallel range: by the channel
// blocks of all outputs, or by rows where a single weight is narrow and the rows many (the codec's
// convolutions: 96-768 channels over thousands of samples).
void linears(const QuantizedRows& xq, int64_t R, const std::vector<Output>& outs, int bits, int64_t group) {
  if (outs.size() == 1 && R >= 64 && outs[0].p.N / kBlock < 16 * at::get_num_threads()) {
    const Output& o = outs[0];
    at::parallel_for(0, R, 16, [&](int64_t m0, int64_t m1) {
      linear_blocks(xq, m0, m1, o.p.w, o.p.s, o.p.K, group, bits, 0, o.p.N / kBlock, o.y, o.p.N);
    });
    return;
  }
  std::vector<int64_t> start(outs.size() + 1, 0);
  for (size_t j = 0; j < outs.size(); ++j) start[j + 1] = start[j] + outs[j].p.N / kBlock;
  // Grain: at least 8 blocks (128 channels) per task, so a thread's share is worth its hand-off.
  at::parallel_for(0, start.back(), 8, [&](int64_t b0, int64_t b1) {
    for (size_t j = 0; j < outs.size(); ++j) {
      const int64_t lo = std::max(b0, start[j]) - start[j], hi = std::min(b1, start[j + 1]) - start[j];
      if (lo >= hi) continue;
      const Output& o = outs[j];
      linear_blocks(xq, 0, R, o.p.w, o.p.s, o.p.K, group, bits, lo, hi, o.y, o.p.N);
    }
  });
}

at::Tensor lowbit_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales, int64_t out_features,
                         int64_t group, int64_t bits, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(bits == 4 || bits == 8, "bits must be 4 or 8");
  TORCH_CHECK(x.device().is_cpu() && packed.device().is_cpu(), "lowbit linear runs on CPU");
  TORCH_CHECK(packed.scalar_type() == at::kByte && scales.scalar_type() == at::kHalf, "packed u8 and fp16 scales");
  const int64_t K = x.size(-1), N = out_features;
  TORCH_CHECK(group % 8 == 0 && K % group == 0 && N % kBlock == 0, "K must be a multiple of group, N of 16");
  TORCH_CHECK(packed.numel() == (bits == 4 ? N * K / 2 : N * K), "packed weights do not match the shape");
  auto sizes = x.sizes().vec();
  const at::Tensor rows = x.reshape({-1, K}).to(at::kFloat).contiguous();
  const int64_t M = rows.size(0);
  sizes.back() = N;
  at::Tensor y = at::empty({M, N}, rows.options());
  if (M == 0) return y.reshape(sizes).to(x.scalar_type());
  const QuantizedRows xq = quantize_rows(rows.data_ptr<float>(), M, K, group, bits);
  const at::Tensor sc = scales.contiguous();
  linears(xq, M, {Output{packed_of(packed, sc, K, static_cast<int>(bits)), y.data_ptr<float>()}},
          static_cast<int>(bits), group);
  if (bias.has_value() && bias->defined()) y.add_(bias->to(at::kFloat));
  return y.reshape(sizes).to(x.scalar_type());
}

// ---------------------------------------------------------------------------------------------
// A whole decoder stack's step (Qwen3 layers, one or a few tokens per row), in one call
// ---------------------------------------------------------------------------------------------
// Decoding one token runs ~30 small ops per layer (norms, RoPE, cache writes, attention, SiLU,
// residuals) around the 7 linears; through ATen each costs microseconds of dispatch, which for the
// code predictor's 15 passes of 5 layers per frame was as much time as the int4 linears themselves.
// Here they are plain loops over a few thousand floats, and q/k/v (and gate/up) run as one
// parallel region.

inline float dot(const float* a, const float* b, int64_t n) {
#ifdef Q3TTS_AVX512
  if (n % 16 == 0) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
    return _mm512_reduce_add_ps(acc);
  }
#endif
  float acc = 0.f;
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

// out = x / rms(x) * weight, in place over `n` floats.
inline void rms_norm(float* x, const float* weight, int64_t n, float eps) {
  const float inv = 1.f / std::sqrt(dot(x, x, n) / float(n) + eps);
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] * inv * weight[i];
}

inline void rms_norm_to(const float* x, float* out, const float* weight, int64_t n, float eps) {
  std::memcpy(out, x, n * sizeof(float));
  rms_norm(out, weight, n, eps);
}

// Rotate-half RoPE (pairs i and i + D/2) with one row's cos/sin table (D/2 each).
inline void rope(float* x, const float* cos_sin, int64_t D) {
  const int64_t half = D / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float c = cos_sin[i], s = cos_sin[half + i];
    const float a = x[i], b = x[i + half];
    x[i] = a * c - b * s;
    x[i + half] = b * c + a * s;
  }
}

#ifdef Q3TTS_AVX512
// e^x to about 1 ulp: x = n ln2 + r (two-part ln2), e^r by its degree-6 polynomial, times 2^n.
inline __m512 exp_avx512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.7f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}
#endif

// gate = silu(gate) * up over n floats, in parallel for prefills: the scalar loop's exp was a
// serial ~10% of a 107-token prefill.
void silu_gate(float* gate, const float* up, int64_t n) {
  at::parallel_for(0, n, 8192, [&](int64_t i0, int64_t i1) {
    int64_t i = i0;
#ifdef Q3TTS_AVX512
    for (; i + 16 <= i1; i += 16) {
      const __m512 g = _mm512_loadu_ps(gate + i);
      const __m512 e = exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), g));
      const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.f), e));
      _mm512_storeu_ps(gate + i, _mm512_mul_ps(silu, _mm512_loadu_ps(up + i)));
    }
#endif
    for (; i < i1; ++i) {
      const float g = gate[i];
      gate[i] = g / (1.f + std::exp(-g)) * up[i];
    }
  });
}

at::Tensor stack_step(const at::Tensor& x_in, at::TensorList params, at::TensorList k_caches,
                      at::TensorList v_caches, const at::Tensor& slots, const at::Tensor& positions,
                      const c10::optional<at::Tensor>& valid, int64_t width, int64_t tokens, const at::Tensor& inv_freq,
                      int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t bits, int64_t group, double eps_d,
                      const c10::optional<at::Tensor>& final_norm, const c10::optional<at::Tensor>& head_packed,
                      const c10::optional<at::Tensor>& head_scales, int64_t head_bits) {
  constexpr int kParams = 18;  // per layer, in this order (see lowbit.py _layer_params)
  const int64_t L = static_cast<int64_t>(params.size()) / kParams;
  TORCH_CHECK(L * kParams == static_cast<int64_t>(params.size()) && L == static_cast<int64_t>(k_caches.size()),
              "params/caches do not describe the same number of layers");
  const float eps = static_cast<float>(eps_d);
  at::Tensor x = x_in.to(at::kFloat).contiguous().clone();
  const int64_t R = x.size(0), H = x.size(1), D = head_dim, T = tokens;
  const int64_t QD = heads * D, KD = kv_heads * D, group_heads = heads / kv_heads;
  const int64_t S = k_caches[0].size(2);
  for (int64_t l = 0; l < L; ++l) {
    for (const at::Tensor& c : {k_caches[l], v_caches[l]}) {
      TORCH_CHECK(c.scalar_type() == at::kFloat && c.dim() == 4 && c.stride(3) == 1 && c.stride(2) == head_dim &&
                      c.size(1) == kv_heads && c.size(2) == S,
                  "caches must be float32 [B, kv_heads, S, head_dim] with contiguous slots");
    }
  }
  TORCH_CHECK(slots.scalar_type() == at::kLong && positions.scalar_type() == at::kLong &&
                  slots.is_contiguous() && positions.is_contiguous() && slots.numel() == x_in.size(0) &&
                  positions.numel() == x_in.size(0), "slots and positions: one int64 per row");
  TORCH_CHECK(!valid.has_value() || !valid->defined() ||
                  (valid->scalar_type() == at::kBool && valid->stride(1) == 1 && width <= S &&
                   valid->size(0) == x_in.size(0)),
              "valid: bool [rows, >= width] with contiguous slots");
  const int64_t* slot = slots.data_ptr<int64_t>();
  const int64_t* pos = positions.data_ptr<int64_t>();
  const bool* vis = valid.has_value() && valid->defined() ? valid->data_ptr<bool>() : nullptr;
  const int64_t vis_stride = vis ? valid->stride(0) : 0;
  const float* freq = inv_freq.data_ptr<float>();
  const float scale = 1.f / std::sqrt(float(D));
  const int64_t I = params[12].numel() * (bits == 4 ? 2 : 1) / H;  // gate rows
  // cos/sin of every row's position, once per call (not per layer and head).
  std::vector<float> cos_sin(R * D);
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t i = 0; i < D / 2; ++i) {
      const float f = float(pos[r]) * freq[i];
      cos_sin[r * D + i] = std::cos(f);
      cos_sin[r * D + D / 2 + i] = std::sin(f);
    }
  }
  std::vector<float> h(R * H), q(R * QD), k(R * KD), v(R * KD), att(R * QD), gate(R * I), up(R * I), o(R * H);
  float* xs = x.data_ptr<float>();
  for (int64_t l = 0; l < L; ++l) {
    auto P = [&](int i) -> const at::Tensor& { return params[l * kParams + i]; };
    const float* ln1 = P(0).data_ptr<float>();
    const float* qn = P(7).data_ptr<float>();
    const float* kn = P(8).data_ptr<float>();
    const float* ln2 = P(11).data_ptr<float>();
    at::parallel_for(0, R, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) rms_norm_to(xs + r * H, h.data() + r * H, ln1, H, eps);
    });
    QuantizedRows hq = quantize_rows(h.data(), R, H, group, bits);
    linears(hq, R,
            {Output{packed_of(P(1), P(2), H, bits), q.data()}, Output{packed_of(P(3), P(4), H, bits), k.data()},
             Output{packed_of(P(5), P(6), H, bits), v.data()}},
            bits, group);
    // Norm and rotate q and k, write k and v into the cache at each row's slot.
    float* kc = k_caches[l].data_ptr<float>();
    float* vc = v_caches[l].data_ptr<float>();
    const int64_t row_stride = k_caches[l].stride(0), head_stride = k_caches[l].stride(1);
    at::parallel_for(0, R, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / T;
        for (int64_t hh = 0; hh < heads; ++hh) {
          rms_norm(q.data() + r * QD + hh * D, qn, D, eps);
          rope(q.data() + r * QD + hh * D, cos_sin.data() + r * D, D);
        }
        for (int64_t hh = 0; hh < kv_heads; ++hh) {
          float* kr = k.data() + r * KD + hh * D;
          rms_norm(kr, kn, D, eps);
          rope(kr, cos_sin.data() + r * D, D);
          std::memcpy(kc + b * row_stride + hh * head_stride + slot[r] * D, kr, D * sizeof(float));
          std::memcpy(vc + b * row_stride + hh * head_stride + slot[r] * D, v.data() + r * KD + hh * D,
                      D * sizeof(float));
        }
      }
    });
    // Attention of every (row, head): over the slots the row may see.
    at::parallel_for(0, R * heads, 4, [&](int64_t i0, int64_t i1) {
      std::vector<float> p(S);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t r = i / heads, hh = i % heads, b = r / T, kvh = hh / group_heads;
        const float* qr = q.data() + r * QD + hh * D;
        const float* kb = kc + b * row_stride + kvh * head_stride;
        const float* vb = vc + b * row_stride + kvh * head_stride;
        const int64_t end = vis ? width : slot[r] + 1;
        float mx = -INFINITY;
        for (int64_t s = 0; s < end; ++s) {
          if (vis && !vis[r * vis_stride + s]) {
            p[s] = -INFINITY;
            continue;
          }
          p[s] = dot(qr, kb + s * D, D) * scale;
          mx = std::max(mx, p[s]);
        }
        float total = 0.f;
        for (int64_t s = 0; s < end; ++s) {
          p[s] = p[s] == -INFINITY ? 0.f : std::exp(p[s] - mx);
          total += p[s];
        }
        float* out = att.data() + r * QD + hh * D;
        std::fill(out, out + D, 0.f);
        for (int64_t s = 0; s < end; ++s) {
          if (p[s] == 0.f) continue;
          const float w = p[s] / total;
          const float* vs = vb + s * D;
          for (int64_t d = 0; d < D; ++d) out[d] += w * vs[d];
        }
      }
    });
    QuantizedRows aq = quantize_rows(att.data(), R, QD, group, bits);
    linears(aq, R, {Output{packed_of(P(9), P(10), QD, bits), o.data()}}, bits, group);
    for (int64_t i = 0; i < R * H; ++i) xs[i] += o[i];
    at::parallel_for(0, R, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) rms_norm_to(xs + r * H, h.data() + r * H, ln2, H, eps);
    });
    hq = quantize_rows(h.data(), R, H, group, bits);
    linears(hq, R,
            {Output{packed_of(P(12), P(13), H, bits), gate.data()}, Output{packed_of(P(14), P(15), H, bits), up.data()}},
            bits, group);
    silu_gate(gate.data(), up.data(), R * I);
    QuantizedRows gq = quantize_rows(gate.data(), R, I, group, bits);
    linears(gq, R, {Output{packed_of(P(16), P(17), I, bits), o.data()}}, bits, group);
    for (int64_t i = 0; i < R * H; ++i) xs[i] += o[i];
  }
  if (!(head_packed.has_value() && head_packed->defined())) return x;
  // The head on each batch row's last token: final norm, then logits [B, V].
  TORCH_CHECK(final_norm.has_value() && final_norm->defined() && head_scales.has_value() && head_scales->defined(),
              "a head needs the final norm and its scales");
  const int64_t B = R / T;
  std::vector<float> last(B * H);
  for (int64_t b = 0; b < B; ++b)
    rms_norm_to(xs + (b * T + T - 1) * H, last.data() + b * H, final_norm->data_ptr<float>(), H, eps);
  const Packed head = packed_of(*head_packed, *head_scales, H, static_cast<int>(head_bits));
  at::Tensor logits = at::empty({B, head.N}, x.options());
  QuantizedRows lq = quantize_rows(last.data(), B, H, group, head_bits);
  linears(lq, B, {Output{head, logits.data_ptr<float>()}}, static_cast<int>(head_bits), group);
  return logits;
}

// ---------------------------------------------------------------------------------------------
// SnakeBeta for the codec decoder, time-major x [..., C]: y = x + sin(x * alpha)^2 * inv_beta, per
// channel, in one pass (torch's five in-place passes over these long signals measured 3.7 ms a
// frame of the 0.6B codec's 2.8 M activations). sin^2 has period pi, so z is reduced by the nearest
// multiple of pi (three-part constant: k * PI_A and k * PI_B are exact for |k| < 4096) to
// r in [-pi/2, pi/2], where sin r is its Taylor polynomial to r^11 (truncation under 6e-8);
// |z| > 8192 takes the scalar std::sin. Every sample is computed alone, so streaming stays exact.
constexpr float kPiA = 3.140625f, kPiB = 0.0009675026f, kPiC = 1.509958e-07f;
constexpr float kBigZ = 8192.0f;
// sin r = r + r^3 (c0 r^8 + c1 r^6 + c2 r^4 + c3 r^2 + c4): -1/11!, 1/9!, -1/7!, 1/5!, -1/3!
constexpr float kSinTaylor[5] = {-2.5052108e-08f, 2.7557319e-06f, -1.9841270e-04f, 8.3333333e-03f, -1.6666667e-01f};

inline float snake_scalar(float x, float a, float ib) {
  const float s = std::sin(x * a);
  return x + (s * s) * ib;
}

#if defined(Q3TTS_AVX512)
inline __m512 sin_reduced_avx512(__m512 z) {
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(z, _mm512_set1_ps(0.318309886f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(kPiA), z);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(kPiB), r);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(kPiC), r);
  const __m512 r2 = _mm512_mul_ps(r, r);
  __m512 p = _mm512_set1_ps(kSinTaylor[0]);
  for (int i = 1; i < 5; ++i) p = _mm512_fmadd_ps(p, r2, _mm512_set1_ps(kSinTaylor[i]));
  return _mm512_fmadd_ps(_mm512_mul_ps(p, r2), r, r);  // +-sin z: the sign is squared away
}
#elif defined(Q3TTS_AVX2)
inline __m256 sin_reduced_avx2(__m256 z) {
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(z, _mm256_set1_ps(0.318309886f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(kPiA), z);
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(kPiB), r);
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(kPiC), r);
  const __m256 r2 = _mm256_mul_ps(r, r);
  __m256 p = _mm256_set1_ps(kSinTaylor[0]);
  for (int i = 1; i < 5; ++i) p = _mm256_fmadd_ps(p, r2, _mm256_set1_ps(kSinTaylor[i]));
  return _mm256_fmadd_ps(_mm256_mul_ps(p, r2), r, r);
}
#endif

void snake_row(const float* x, const float* a, const float* ib, float* y, int64_t C) {
  int64_t c = 0;
#if defined(Q3TTS_AVX512)
  for (; c + 16 <= C; c += 16) {
    const __m512 xv = _mm512_loadu_ps(x + c);
    const __m512 z = _mm512_mul_ps(xv, _mm512_loadu_ps(a + c));
    const __m512 s = sin_reduced_avx512(z);
    _mm512_storeu_ps(y + c, _mm512_add_ps(xv, _mm512_mul_ps(_mm512_mul_ps(s, s), _mm512_loadu_ps(ib + c))));
    const __mmask16 big = _mm512_cmp_ps_mask(_mm512_abs_ps(z), _mm512_set1_ps(kBigZ), _CMP_GT_OQ);
    if (big)
      for (int l = 0; l < 16; ++l)
        if (big & (1u << l)) y[c + l] = snake_scalar(x[c + l], a[c + l], ib[c + l]);
  }
#elif defined(Q3TTS_AVX2)
  for (; c + 8 <= C; c += 8) {
    const __m256 xv = _mm256_loadu_ps(x + c);
    const __m256 z = _mm256_mul_ps(xv, _mm256_loadu_ps(a + c));
    const __m256 s = sin_reduced_avx2(z);
    _mm256_storeu_ps(y + c, _mm256_add_ps(xv, _mm256_mul_ps(_mm256_mul_ps(s, s), _mm256_loadu_ps(ib + c))));
    const __m256 absz = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), z);
    const int big = _mm256_movemask_ps(_mm256_cmp_ps(absz, _mm256_set1_ps(kBigZ), _CMP_GT_OQ));
    if (big)
      for (int l = 0; l < 8; ++l)
        if (big & (1 << l)) y[c + l] = snake_scalar(x[c + l], a[c + l], ib[c + l]);
  }
#endif
  for (; c < C; ++c) y[c] = snake_scalar(x[c], a[c], ib[c]);
}

at::Tensor snake(const at::Tensor& x_in, const at::Tensor& alpha_in, const at::Tensor& inv_beta_in) {
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && alpha_in.scalar_type() == at::kFloat &&
                  inv_beta_in.scalar_type() == at::kFloat,
              "snake: float32 tensors expected");
  const int64_t C = x_in.size(-1);
  TORCH_CHECK(alpha_in.numel() == C && inv_beta_in.numel() == C, "snake: one alpha and beta per channel (last dim)");
  const at::Tensor x = x_in.contiguous(), alpha = alpha_in.contiguous(), inv_beta = inv_beta_in.contiguous();
  at::Tensor y = at::empty_like(x);
  const int64_t rows = C ? x.numel() / C : 0;
  const float *xp = x.data_ptr<float>(), *ap = alpha.data_ptr<float>(), *bp = inv_beta.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) snake_row(xp + r * C, ap, bp, yp + r * C, C);
  });
  return y;
}

// Which path this build runs: 512 (AVX512-VNNI), 257 (AVX2 + AVX-VNNI), 256 (AVX2), 0 (portable).
int64_t kernel_isa() {
#if defined(Q3TTS_AVX512)
  return 512;
#elif defined(Q3TTS_AVX2) && defined(__AVXVNNI__)
  return 257;
#elif defined(Q3TTS_AVX2)
  return 256;
#else
  return 0;
#endif
}

}  // namespace

// The namespace comes from the build (-DQ3TTS_LIBRARY=...), so that the portable build can be loaded
// beside the SIMD one in tests; the indirection expands it before TORCH_LIBRARY pastes tokens.
#define Q3TTS_DEFINE_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
#define Q3TTS_IMPLEMENT_LIBRARY(ns, key, m) TORCH_LIBRARY_IMPL(ns, key, m)

Q3TTS_DEFINE_LIBRARY(Q3TTS_LIBRARY, m) {
  m.def("linear(Tensor x, Tensor packed, Tensor scales, int out_features, int group, int bits, Tensor? bias) -> Tensor");
  m.def("isa() -> int", &kernel_isa);
  m.def("snake(Tensor x, Tensor alpha, Tensor inv_beta) -> Tensor");
  m.def("stack_step(Tensor x, Tensor[] params, Tensor[] k_caches, Tensor[] v_caches, Tensor slots, Tensor positions, "
        "Tensor? valid, int width, int tokens, Tensor inv_freq, int heads, int kv_heads, int head_dim, int bits, "
        "int group, float eps, Tensor? final_norm=None, Tensor? head_packed=None, Tensor? head_scales=None, "
        "int head_bits=4) -> Tensor");
}

Q3TTS_IMPLEMENT_LIBRARY(Q3TTS_LIBRARY, CPU, m) {
  m.impl("linear", &lowbit_linear);
  m.impl("stack_step", &stack_step);
  m.impl("snake", &snake);
}
