// Warpgroup MMA (wgmma, sm_90a) for the forward and backward kernels: shared-memory matrix descriptors for
// 128-byte-swizzled bf16 tiles and the m64n64k16 bf16 -> fp32 instruction with A from shared memory
// or from registers.
//
// Tiles: bf16 [rows][64] with 128-byte rows, the 16-byte chunks XOR-swizzled by (row % 8) (swz<64>
// in common.cuh), based at a multiple of 1024 bytes. That is the hardware's 128B-swizzle atom (8 rows
// x 128 bytes), so a descriptor with SBO = 1024 (the stride between 8-row groups) describes:
//   - a K-major operand (k contiguous: rows are m or n, 64 k per row); the k-th 16-wide slice
//     starts 32 bytes further (the hardware applies the swizzle to the computed addresses);
//   - an MN-major operand (m or n contiguous: rows are k, 64 m or n per row; tnsp flag set); the
//     k-th 16-row slice starts 2048 bytes further.
// Accumulators: for m64n64, warp i of the warpgroup holds rows 16 i .. 16 i + 15 as float [8][4],
// the same layout as eight mma.sync m16n8 accumulators (common.cuh), so register tiles are shared
// between the two kinds of product; an A operand from registers is the mma.sync A fragment.
#pragma once

#include "common.cuh"

namespace tttgraph {

// Descriptor of a 128B-swizzled tile starting at `p` (shared memory; the atom base 1024-aligned).
__device__ __forceinline__ uint64_t desc_sw128(const void* p) {
  const uint32_t addr = smem_u32(p);
  uint64_t d = static_cast<uint64_t>((addr & 0x3FFFF) >> 4);  // start address, bits 0-13
  d |= static_cast<uint64_t>(1) << 16;                        // LBO (unused by these layouts)
  d |= static_cast<uint64_t>(1024 >> 4) << 32;                // SBO: 8 rows of 128 bytes
  d |= static_cast<uint64_t>(1) << 62;                        // 128-byte swizzle
  return d;
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Generic-proxy shared-memory writes (st.shared, cp.async) become visible to the async proxy
// (wgmma operand reads) after this fence plus a barrier.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Keep the compiler from moving reads/writes of an accumulator across the asynchronous wgmma.
__device__ __forceinline__ void fence_acc(float (&d)[8][4]) {
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[j][e])::"memory");
}

#define TTT_WGMMA_D32(d)                                                                                      \
  "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]),   \
      "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), \
      "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), \
      "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), \
      "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
#define TTT_WGMMA_D32_STR                                                                              \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, " \
  "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"

// d (64 x 64 per warpgroup) = (ACC ? d : 0) + SCALE_A * A B, A and B from shared memory.
// TA / TB: A / B MN-major (transposed) instead of K-major.
template <int SCALE_A, int TA, int TB>
__device__ __forceinline__ void wgmma_ss(float (&d)[8][4], uint64_t a, uint64_t b, bool acc) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " TTT_WGMMA_D32_STR
      ", %32, %33, p, %35, 1, %36, %37;\n}\n"
      : TTT_WGMMA_D32(d)
      : "l"(a), "l"(b), "r"(static_cast<int>(acc)), "n"(SCALE_A), "n"(TA), "n"(TB));
}

// The same with A (this warp's 16 rows x 16 k, the mma.sync A fragment) from registers.
template <int SCALE_A, int TB>
__device__ __forceinline__ void wgmma_rs(float (&d)[8][4], const uint32_t (&a)[4], uint64_t b, bool acc) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " TTT_WGMMA_D32_STR
      ", {%32, %33, %34, %35}, %36, p, %38, 1, %39;\n}\n"
      : TTT_WGMMA_D32(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(static_cast<int>(acc)), "n"(SCALE_A), "n"(TB));
}

#undef TTT_WGMMA_D32_STR
#undef TTT_WGMMA_D32

// ---- whole products (the backward's and the output workers'): d (64 x 64 per warpgroup) over
// k = 16 KS, issued, not waited.
// Descriptors point at the first k slice; the next starts 32 bytes (K-major) or 2048 bytes (MN-major)
// further, i.e. 2 or 128 in the descriptor's 16-byte units. ACC false: d = SCALE_A A B (d's old
// contents ignored). The caller brackets them with wgmma_fence / commit / wait.

// The hidden-column half `h` (64 columns) of a [rows][128] tile stored as two [rows][64] halves.
__device__ __forceinline__ const bf16* half_of(const bf16* tile, int rows, int h) { return tile + h * rows * 64; }
__device__ __forceinline__ bf16* half_of(bf16* tile, int rows, int h) { return tile + h * rows * 64; }

template <int SCALE_A, int TA, int TB, bool ACC, int KS = 4>
__device__ __forceinline__ void wg_ss(float (&d)[8][4], uint64_t a, uint64_t b) {
#pragma unroll
  for (int kk = 0; kk < KS; ++kk)
    wgmma_ss<SCALE_A, TA, TB>(d, a + (TA ? 128 : 2) * kk, b + (TB ? 128 : 2) * kk, ACC || kk > 0);
}

// A from registers: fr[kk] the bf16 A fragments of this warp's 16 rows, k slice kk.
template <int SCALE_A, int TB, bool ACC, int KS = 4>
__device__ __forceinline__ void wg_rs(float (&d)[8][4], const uint32_t (&fr)[KS][4], uint64_t b) {
#pragma unroll
  for (int kk = 0; kk < KS; ++kk) wgmma_rs<SCALE_A, TB>(d, fr[kk], b + (TB ? 128 : 2) * kk, ACC || kk > 0);
}

// The bf16 A fragments of a 16 x 64 fp32 register tile (an accumulator) for wg_rs.
__device__ __forceinline__ void to_frags(const float (&x)[8][4], uint32_t (&fr)[4][4]) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) acc_to_a(x, kk, fr[kk]);
}

// Whole products, issued and waited (accumulators fenced): d = SCALE_A A B with A and B from shared
// memory (descriptors of their first k slices; TA / TB: MN-major) ...
template <int SCALE_A, int TA, int TB>
__device__ __forceinline__ void wg_product_ss(float (&d)[8][4], uint64_t a, uint64_t b) {
  wgmma_fence();
  wg_ss<SCALE_A, TA, TB, false>(d, a, b);
  wgmma_commit();
  wgmma_wait<0>();
  fence_acc(d);
}

// ... with A as this warp's bf16 A fragments fr (16 rows x 64 k) ...
template <int SCALE_A, int TB>
__device__ __forceinline__ void wg_product_rf(float (&d)[8][4], const uint32_t (&fr)[4][4], uint64_t b) {
  wgmma_fence();
  wg_rs<SCALE_A, TB, false>(d, fr, b);
  wgmma_commit();
  wgmma_wait<0>();
  fence_acc(d);
}

// ... or with A as this warp's 16 x 64 fp32 tile x (converted to bf16 fragments).
template <int SCALE_A, int TB>
__device__ __forceinline__ void wg_product_rs(float (&d)[8][4], const float (&x)[8][4], uint64_t b) {
  uint32_t fr[4][4];
  to_frags(x, fr);
  wg_product_rf<SCALE_A, TB>(d, fr, b);
}

// Store A fragments fr (this warp's rows r0.. x 64 columns, bf16) into a swizzled [rows][64] tile.
__device__ __forceinline__ void store_frags_bf16(bf16* tile, const uint32_t (&fr)[4][4], int r0, int lane) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    const int c = 16 * kk + 2 * t;
    *reinterpret_cast<uint32_t*>(tile + swz<64>(r0 + g, c)) = fr[kk][0];
    *reinterpret_cast<uint32_t*>(tile + swz<64>(r0 + g + 8, c)) = fr[kk][1];
    *reinterpret_cast<uint32_t*>(tile + swz<64>(r0 + g, c + 8)) = fr[kk][2];
    *reinterpret_cast<uint32_t*>(tile + swz<64>(r0 + g + 8, c + 8)) = fr[kk][3];
  }
}


}  // namespace tttgraph
