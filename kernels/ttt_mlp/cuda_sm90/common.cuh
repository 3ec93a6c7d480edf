// Building blocks of the sm_90a TTT-MLP kernels: bf16 packing and fragment layouts, swizzled shared
// memory tiles, asynchronous copies, cluster barriers and distributed shared memory, mbarriers,
// global flags, and the elementwise maths (GELU-tanh and its derivatives, warp sums).
//
// The products run on wgmma (wgmma.cuh), whose m64n64 accumulators hold, per warp, the same
// registers as eight mma.sync.m16n8k16 accumulators; the fragment layouts of that instruction
// (g = lane / 4, t = lane % 4), as in the PTX ISA, are therefore the kernels' register layouts:
//   A 16x16 bf16: a0 (row g, cols 2t..2t+1), a1 (row g+8, 2t..), a2 (row g, 2t+8..), a3 (row g+8, 2t+8..)
//   B 16x8  bf16: b0 (k 2t..2t+1, col g), b1 (k 2t+8.., col g)
//   C 16x8  fp32: c0, c1 (row g, cols 2t, 2t+1), c2, c3 (row g+8, cols 2t, 2t+1)
// So a warp's accumulators for a 16 x 8n tile are float acc[n][4], and two neighbouring n-tiles of
// an accumulator are exactly the A fragment of a 16x16 block (the flash-attention register reuse).
#pragma once

#include <cuda_bf16.h>
#include <cstdint>

namespace tttgraph {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// The two bf16 of a packed pair as floats (low half first).
__device__ __forceinline__ float2 unpack_bf16(uint32_t x) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&x));
}

// x = hi + lo with hi = bf16(x), lo = bf16(x - hi): ~16 mantissa bits in two bf16 operands.
__device__ __forceinline__ void split_bf16(float x0, float x1, uint32_t& hi, uint32_t& lo) {
  __nv_bfloat162 h = __floats2bfloat162_rn(x0, x1);
  float2 hf = __bfloat1622float2(h);
  hi = *reinterpret_cast<uint32_t*>(&h);
  lo = pack_bf16(x0 - hf.x, x1 - hf.y);
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Element offset of (row, col) in a row-major bf16 tile of COLS columns (COLS a multiple of 64),
// with the 16-byte chunks of each row XOR-swizzled by (row % 8): the rows a fragment store writes
// fall in 8 different bank groups, and for COLS = 64 it is wgmma's 128-byte swizzle (wgmma.cuh).
template <int COLS>
__device__ __forceinline__ int swz(int row, int col) {
  static_assert(COLS % 64 == 0, "swizzled tiles need rows of >= 8 chunks of 16 bytes");
  return row * COLS + ((((col >> 3) ^ (row & 7))) << 3) + (col & 7);
}

// The A fragment of the 16x16 block (n-tiles 2j, 2j+1) of a 16 x 8n fp32 accumulator.
template <int N>
__device__ __forceinline__ void acc_to_a(const float (&acc)[N][4], int j, uint32_t (&a)[4]) {
  a[0] = pack_bf16(acc[2 * j][0], acc[2 * j][1]);
  a[1] = pack_bf16(acc[2 * j][2], acc[2 * j][3]);
  a[2] = pack_bf16(acc[2 * j + 1][0], acc[2 * j + 1][1]);
  a[3] = pack_bf16(acc[2 * j + 1][2], acc[2 * j + 1][3]);
}

template <int N>
__device__ __forceinline__ void acc_to_a_split(const float (&acc)[N][4], int j, uint32_t (&hi)[4], uint32_t (&lo)[4]) {
  split_bf16(acc[2 * j][0], acc[2 * j][1], hi[0], lo[0]);
  split_bf16(acc[2 * j][2], acc[2 * j][3], hi[1], lo[1]);
  split_bf16(acc[2 * j + 1][0], acc[2 * j + 1][1], hi[2], lo[2]);
  split_bf16(acc[2 * j + 1][2], acc[2 * j + 1][3], hi[3], lo[3]);
}

// Store a 16 x 8n accumulator tile as bf16 into a swizzled [rows][COLS] tile at (r0, c0).
template <int COLS, int N>
__device__ __forceinline__ void store_acc_bf16(bf16* tile, const float (&acc)[N][4], int r0, int c0, int lane) {
  int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int j = 0; j < N; ++j) {
    int c = c0 + 8 * j + 2 * t;
    *reinterpret_cast<uint32_t*>(tile + swz<COLS>(r0 + g, c)) = pack_bf16(acc[j][0], acc[j][1]);
    *reinterpret_cast<uint32_t*>(tile + swz<COLS>(r0 + g + 8, c)) = pack_bf16(acc[j][2], acc[j][3]);
  }
}

// Store the bf16 hi and lo parts of a 16 x 8n fp32 tile (the state) into two swizzled tiles.
template <int COLS, int N>
__device__ __forceinline__ void store_acc_split(bf16* hi, bf16* lo, const float (&acc)[N][4], int r0, int c0,
                                                int lane) {
  int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int j = 0; j < N; ++j) {
    int c = c0 + 8 * j + 2 * t;
    uint32_t h, l;
    split_bf16(acc[j][0], acc[j][1], h, l);
    *reinterpret_cast<uint32_t*>(hi + swz<COLS>(r0 + g, c)) = h;
    *reinterpret_cast<uint32_t*>(lo + swz<COLS>(r0 + g, c)) = l;
    split_bf16(acc[j][2], acc[j][3], h, l);
    *reinterpret_cast<uint32_t*>(hi + swz<COLS>(r0 + g + 8, c)) = h;
    *reinterpret_cast<uint32_t*>(lo + swz<COLS>(r0 + g + 8, c)) = l;
  }
}

// Two values of a bf16 tile at (row, col), (row, col + 1) as floats.
template <int COLS>
__device__ __forceinline__ float2 load_pair(const bf16* tile, int row, int col) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(tile + swz<COLS>(row, col)));
}

// ---- asynchronous copies global -> shared ---------------------------------------------------------

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  // src-size 0 fills the 16 bytes with zeros: rows past the end of the sequence read as zero.
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem),
               "r"(valid ? 16 : 0));
}
// 4 bytes (zeros when !valid; gmem must still be a mapped address).
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem),
               "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// ---- clusters -------------------------------------------------------------------------------------

__device__ __forceinline__ uint32_t cluster_rank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}
// Release this CTA's prior shared-memory writes to the cluster / wait until every CTA arrived.
__device__ __forceinline__ void cluster_arrive() { asm volatile("barrier.cluster.arrive.release.aligned;\n" ::); }
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::); }
// Barrier `id` (1..15; 0 is __syncthreads) over `threads` threads of this CTA.
__device__ __forceinline__ void named_barrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void cluster_sync() {
  cluster_arrive();
  cluster_wait();
}

// Generic address of the same shared-memory object in CTA `rank` of the cluster.
template <typename T>
__device__ __forceinline__ T* map_rank(T* p, uint32_t rank) {
  uint64_t out;
  asm volatile("mapa.u64 %0, %1, %2;\n" : "=l"(out) : "l"(reinterpret_cast<uint64_t>(p)), "r"(rank));
  return reinterpret_cast<T*>(out);
}

// ---- mbarriers and asynchronous stores into a peer's shared memory ---------------------------------
// (The forward's point-to-point exchange: the receiver arms its barrier with the bytes it expects,
// the sender's st.async stores complete those bytes on it, the receiver waits with acquire.)

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// Makes mbarrier.init visible to the cluster (before the cluster barrier that publishes it).
__device__ __forceinline__ void fence_mbar_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
// Arrive (count 1) and expect `bytes` more of asynchronous stores in the current phase. Release at CTA
// scope only: the arm publishes nothing to the peer (its st.async data is what the waiters acquire),
// and .release.cluster costs a MEMBAR.ALL.GPU + ERRBAR per arm on the arming warp (3% of the
// forward's stall samples, on the serial chain).
__device__ __forceinline__ void mbar_arm(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.release.cta.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
// Spin until the phase with parity `parity` has completed; acquire at cluster scope (the peer's
// st.async data is visible afterwards).
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred p;\nWAIT_%=:\n"
      "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%0], %1;\n"
      "@!p bra WAIT_%=;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
// ---- flags in global memory between CTAs of one grid (the decoupled forward's ring) ----
// Release: this thread's prior writes, and those of every thread that passed a CTA barrier with it
// before (release is cumulative), are visible at GPU scope before the flag is.
__device__ __forceinline__ void flag_release(unsigned* flag, unsigned v) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;\n" ::"l"(flag), "r"(v) : "memory");
}
__device__ __forceinline__ unsigned flag_acquire(const unsigned* flag) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(flag) : "memory");
  return v;
}
// Spin until *flag >= v (acquire).
__device__ __forceinline__ void flag_wait_geq(const unsigned* flag, unsigned v) {
  while (flag_acquire(flag) < v) __nanosleep(64);
}

// The shared::cluster address of the same shared-memory offset in CTA `rank`.
__device__ __forceinline__ uint32_t map_rank_u32(uint32_t addr, uint32_t rank) {
  uint32_t out;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(out) : "r"(addr), "r"(rank));
  return out;
}
// Store two floats at `addr` in a peer CTA's shared memory and complete 8 bytes on its barrier `bar`
// (both shared::cluster addresses); nothing waits for it here.
__device__ __forceinline__ void st_async_f2(uint32_t addr, float2 v, uint32_t bar) {
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v2.b32 [%0], {%1, %2}, [%3];\n" ::"r"(addr),
               "r"(__float_as_uint(v.x)), "r"(__float_as_uint(v.y)), "r"(bar)
               : "memory");
}

// ---- elementwise --------------------------------------------------------------------------------

constexpr float kGeluC = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluA = 0.044715f;

// tanh through exp: 1 - 2 / (1 + e^{2u}); exact limits at +-inf, ~1e-7 relative error.
__device__ __forceinline__ float tanh_exp(float u) { return 1.f - __fdividef(2.f, 1.f + __expf(2.f * u)); }

// One MUFU instruction; max relative error 2^-10.99 (PTX ISA).
__device__ __forceinline__ float tanh_fast(float u) {
  float t;
  asm("tanh.approx.f32 %0, %1;\n" : "=f"(t) : "f"(u));
  return t;
}

template <bool FAST>
__device__ __forceinline__ float tanh_sel(float u) {
  return FAST ? tanh_fast(u) : tanh_exp(u);
}

template <bool FAST>
__device__ __forceinline__ float gelu(float z) {
  float t = tanh_sel<FAST>(kGeluC * (z + kGeluA * z * z * z));
  return 0.5f * z * (1.f + t);
}

template <bool FAST>
__device__ __forceinline__ void gelu_d1(float z, float& g, float& d) {
  float t = tanh_sel<FAST>(kGeluC * (z + kGeluA * z * z * z));
  float du = kGeluC * (1.f + 3.f * kGeluA * z * z);
  g = 0.5f * z * (1.f + t);
  d = 0.5f * (1.f + t) + 0.5f * z * (1.f - t * t) * du;
}

// gelu_tanh'(z) and gelu_tanh''(z). With u = c (z + a z^3), t = tanh(u):
// g' = (1 + t)/2 + z (1 - t^2) u'/2, g'' = (1 - t^2) (u' - z t u'^2 + 3 a c z^2).
template <bool FAST>
__device__ __forceinline__ void gelu_d12(float z, float& d1, float& d2) {
  const float t = tanh_sel<FAST>(kGeluC * (z + kGeluA * z * z * z));
  const float du = kGeluC * (1.f + 3.f * kGeluA * z * z);
  const float s = 1.f - t * t;
  d1 = 0.5f * (1.f + t) + 0.5f * z * s * du;
  d2 = s * (du - z * t * du * du + 3.f * kGeluA * kGeluC * z * z);
}

template <bool FAST>
__device__ __forceinline__ float gelu_d1_only(float z) {
  const float t = tanh_sel<FAST>(kGeluC * (z + kGeluA * z * z * z));
  const float du = kGeluC * (1.f + 3.f * kGeluA * z * z);
  return 0.5f * (1.f + t) + 0.5f * z * (1.f - t * t) * du;
}

// Sum over the 4 lanes of a quad (the lanes holding one accumulator row).
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  x += __shfl_xor_sync(0xffffffffu, x, 2);
  return x;
}

// Sum over the 8 row groups g of a warp (lanes with the same t): a column sum of a 16-row tile
// once the two rows each lane holds are added.
__device__ __forceinline__ float col_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 4);
  x += __shfl_xor_sync(0xffffffffu, x, 8);
  x += __shfl_xor_sync(0xffffffffu, x, 16);
  return x;
}

}  // namespace tttgraph
