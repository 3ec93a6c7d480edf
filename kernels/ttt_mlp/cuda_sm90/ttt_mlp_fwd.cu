// Forward of tttgraph::ttt_mlp on Hopper (sm_90a): the on-chip tensor-parallel scan.
//
// One thread-block cluster of CS = 2 CTAs per (batch, head). CTA r owns the columns
// [r F/2, (r+1) F/2) of the inner MLP's hidden layer: W1[:, cols], b1[cols], W2[cols, :]. The fp32
// state never leaves the chip: W1 and W2 live in the registers of the warps that update them
// (as mma accumulators, so the update W -= X^T G is one accumulate), b1/b2 in shared memory, and
// a bf16 hi/lo copy of W1 and W2 in shared memory feeds the tensor cores (rewritten once per step).
// Per mini-batch of M = 64 tokens the only couplings across the hidden layer are two row-sums,
// Z2 = sum_f gelu(Z1)_f W2_f (inner step) and Zq2 (output); both cross the cluster in one
// point-to-point exchange per mini-batch (st.async into the peer's shared memory, mbarrier wait).
// The products run on wgmma (wgmma.cuh).
//
// Shapes: q, k, v, out [B, H, T, D] bf16; eta [B, H, T] fp32; ln_w, ln_b [H, D]; w1 [H, D, F];
// b1 [H, F]; w2 [H, F, D]; b2 [H, D] (all fp32); checkpoints ck_w1 [B, H, C, D, F], ck_b1 [B, H, C, F],
// ck_w2 [B, H, C, F, D], ck_b2 [B, H, C, D] fp32: the state before every G-th mini-batch.
// Instantiated for D = 64, F = 256, M = 64 (CogVideoX-5B); README.md beside this file has the design.
#include <cuda_runtime.h>

#include <atomic>
#include <type_traits>

#include "scan_common.cuh"
#include "ttt_mlp.h"
#include "wgmma.cuh"

namespace tttgraph {
namespace sm90 {
namespace fwd {

// Shared memory, in bytes from the dynamic base. Tiles are bf16 [rows][cols], swizzled (swz).
constexpr int HALF = M / CS;                // output rows finished per CTA
constexpr int RECV_Z2 = M * D;              // floats: the peer's Z2 partial, all rows
constexpr int RECV = RECV_Z2 + HALF * D;    // floats per receive buffer: + the peer's Zq2 partial of my rows

// Tiles read by wgmma start at multiples of 1024 bytes (the 128B-swizzle atom, wgmma.cuh); the
// [rows][FL] tiles are stored as two [rows][64] halves (half h: hidden columns 64 h.., one per
// warpgroup), each a 128-byte-row swizzled tile.
constexpr int OFF_K = 0;                              // [2][M][D] double-buffered inputs
constexpr int OFF_Q = OFF_K + 2 * kTileMD;
constexpr int OFF_V = OFF_Q + 2 * kTileMD;
constexpr int OFF_W1H = OFF_V + 2 * kTileMD;          // [2 halves][D][64] bf16 hi / lo of W1
constexpr int OFF_W1L = OFF_W1H + D * FL * 2;
constexpr int OFF_W2H = OFF_W1L + D * FL * 2;         // [FL][D] bf16 hi / lo of W2
constexpr int OFF_W2L = OFF_W2H + FL * D * 2;
constexpr int OFF_A = OFF_W2L + FL * D * 2;           // [2 halves][M][64] gelu(Z1), bf16
// [2 halves][M][64] G_z1, bf16. Also this CTA's Z2 partial ([M][D] fp32) from the fused pass until
// the back of the next step has read it (a CTA barrier separates the last read from the first G_z1
// store).
constexpr int OFF_GZ1 = OFF_A + kTileMF;
constexpr int OFF_GZ2 = OFF_GZ1 + kTileMF;            // [M][D] G_z2, bf16 (hi)
// [M][D] fp32: Zq2 twin staging / my rows' partial. The other half's 32 rows (8 KB) are free from the
// exchange until the next fused pass: they hold the bf16 lo part of G_z2 ([M][D]) meanwhile.
constexpr int OFF_ZQ = OFF_GZ2 + kTileMD;
constexpr int OFF_RECV = OFF_ZQ + M * D * 4;          // [2][RECV] fp32 written by the peer
constexpr int OFF_ETA = OFF_RECV + 2 * RECV * 4;      // [2][M] fp32
constexpr int OFF_B1 = OFF_ETA + 2 * M * 4;           // [FL] fp32
constexpr int OFF_B2 = OFF_B1 + FL * 4;               // [D] fp32
constexpr int OFF_GAMMA = OFF_B2 + D * 4;
constexpr int OFF_BETA = OFF_GAMMA + D * 4;
constexpr int OFF_RED1 = OFF_BETA + D * 4;            // [4][FL] fp32 column sums of G_z1 per row block
constexpr int OFF_RED2 = OFF_RED1 + 4 * FL * 4;       // [8][D] fp32 column sums of G_z2 per 8-row block
// [2] + [2] mbarriers: full_z[b] / full_q[b], receive buffer b holds the Z2 / the Zq2 part of an exchange
constexpr int OFF_FULL = OFF_RED2 + 8 * D * 4;
constexpr int SMEM = OFF_FULL + 4 * 8;
static_assert(OFF_W1H % 1024 == 0 && OFF_W1L % 1024 == 0 && OFF_W2H % 1024 == 0 && OFF_W2L % 1024 == 0 &&
                  OFF_A % 1024 == 0 && OFF_GZ1 % 1024 == 0 && OFF_GZ2 % 1024 == 0 && OFF_ZQ % 1024 == 0,
              "wgmma operand tiles must be 1024-byte aligned");
constexpr int SMEM_LAUNCH = SMEM + 1024;  // room to align the base to 1024 bytes
static_assert(SMEM_LAUNCH <= 227 * 1024, "shared memory over the sm_90 per-block limit");
static_assert(kTileMF == M * D * 4, "the Z2 partial fits the G_z1 tile");

// Prefetch the K, Q, V tiles and eta of the mini-batch starting at token t0 into buffer `buf`.
template <bool WITH_Q = true>
__device__ __forceinline__ void load_tiles(const FwdParams& p, char* sm, size_t bh, int t0, int buf, int tid) {
  const size_t base = (bh * p.T + t0) * D;
  bf16 *k = at<bf16>(sm, OFF_K), *q = at<bf16>(sm, OFF_Q), *v = at<bf16>(sm, OFF_V);
  constexpr int CHUNKS = M * D / 8;  // 16-byte chunks per tile
#pragma unroll
  for (int i = tid; i < CHUNKS; i += THREADS) {
    const int row = i / (D / 8), col = (i % (D / 8)) * 8;
    const bool valid = t0 + row < p.T;
    const size_t g = valid ? base + row * D + col : 0;
    const int o = buf * M * D + swz<D>(row, col);
    cp_async16(k + o, p.k + g, valid);
    if (WITH_Q) cp_async16(q + o, p.q + g, valid);
    cp_async16(v + o, p.v + g, valid);
  }
  if (tid < M)
    cp_async4(at<float>(sm, OFF_ETA) + buf * M + tid, p.eta + bh * p.T + min(t0 + tid, p.T - 1), t0 + tid < p.T);
  cp_async_commit();
}

// ---- the products on wgmma (wgmma.cuh): warpgroup wc = warps 4 wc .. 4 wc + 3 (wr = warp % 4) ----
// Each product is 64 x 64 per warpgroup: token rows (or W rows) 16 wr.. per warp, as in the
// mma.sync layout of scan_common.cuh; k runs over 4 slices of 16.

// acc = X W1[:, half wc] on the tensor cores (issued, not waited): X a [M][D] tile (K-major A),
// W1 hi and, with SPLIT, lo (MN-major B).
template <bool SPLIT>
__device__ __forceinline__ void issue_x_w1(float (&acc)[NF][4], const bf16* x, const StepBufs& s, int wc) {
  const uint64_t a = desc_sw128(x);
  const uint64_t bh = desc_sw128(half_of(s.w1h, D, wc)), bl = desc_sw128(half_of(s.w1l, D, wc));
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    wgmma_ss<1, 0, 1>(acc, a + 2 * kk, bh + 128 * kk, kk > 0);
    if (SPLIT) wgmma_ss<1, 0, 1>(acc, a + 2 * kk, bl + 128 * kk, true);
  }
}

// acc = X W2[half wc rows, :] (a partial over the hidden layer; waited): X this warp's fp32 rows xs
// as register A fragments; SPLIT: X and W2 as hi + lo (3 products).
template <bool SPLIT>
__device__ __forceinline__ void xs_times_w2(float (&acc)[ND][4], const float (&xs)[NF][4], const StepBufs& s,
                                            int wc) {
  uint32_t ah[NF / 2][4], al[NF / 2][4];
#pragma unroll
  for (int kk = 0; kk < NF / 2; ++kk) {
    if (SPLIT) {
      acc_to_a_split(xs, kk, ah[kk], al[kk]);
    } else {
      acc_to_a(xs, kk, ah[kk]);
    }
  }
  const uint64_t bh = desc_sw128(s.w2h + wc * FH * D), bl = desc_sw128(s.w2l + wc * FH * D);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < NF / 2; ++kk) {
    wgmma_rs<1, 1>(acc, ah[kk], bh + 128 * kk, kk > 0);
    if (SPLIT) {
      wgmma_rs<1, 1>(acc, al[kk], bh + 128 * kk, true);
      wgmma_rs<1, 1>(acc, ah[kk], bl + 128 * kk, true);
    }
  }
  wgmma_commit();
  wgmma_wait<0>();
  fence_acc(acc);
}

// The bf16 operand copies of the register state (W1 by hidden-column halves).
template <bool SPLIT>
__device__ __forceinline__ void store_copies_halves(const StepBufs& s, const float (&w1s)[NF][4],
                                                    const float (&w2s)[ND][4], int warp, int lane) {
  const int wr = warp & 3, wc = warp >> 2;
  bf16* w1h = s.w1h + wc * D * 64;
  bf16* w1l = s.w1l + wc * D * 64;
  if (SPLIT) {
    store_acc_split<D>(w1h, w1l, w1s, 16 * wr, 0, lane);
    store_acc_split<D>(s.w2h, s.w2l, w2s, 16 * warp, 0, lane);
  } else {
    store_acc_bf16<D>(w1h, w1s, 16 * wr, 0, lane);
    store_acc_bf16<D>(s.w2h, w2s, 16 * warp, 0, lane);
  }
}

// Front of an inner step from za = K W1 (no bias yet; this warp's rows and hidden columns): Z1 = za
// + b1, A = gelu(Z1) into s.a (halves), da = gelu'(Z1), z2 = this warpgroup's partial of A W2.
template <bool SPLIT, bool FAST>
__device__ __forceinline__ void front_wg(float (&za)[NF][4], float (&da)[NF][4], float (&z2)[ND][4],
                                         const StepBufs& s, int wr, int wc, int lane) {
  add_b1(za, s.b1, wc, lane);
#pragma unroll
  for (int j = 0; j < NF; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) gelu_d1<FAST>(za[j][e], za[j][e], da[j][e]);
  store_acc_bf16<D>(s.a + wc * M * 64, za, 16 * wr, 0, lane);
  xs_times_w2<SPLIT>(z2, za, s, wc);
}

// Back of an inner step with the G_z1 product and the state update on wgmma. The twins split the
// rows: lane (g, t) of warp (wr, wc) takes only row 16 wr + 8 wc + g, so the LayerNorm and G_z2
// element-wise work is done once per row; G_z2 then reaches the product through shared memory as
// bf16 hi (s.gz2) / lo (gz2lo) tiles, and s.red2 holds [8][D] column sums. z2a (aliasing s.gz1)
// and z2b are Z2's two partial tiles; n rows are real; after_first_sync() runs right after the
// first CTA barrier, under_gz1() while the G_z1 product is on the tensor cores (it must not touch
// the state's bf16 copies, A or G_z2). The caller ends it with a proxy fence and __syncthreads.
template <bool SPLIT, typename AfterFirstSync, typename UnderGz1>
__device__ __forceinline__ void back_wg(float (&w1s)[NF][4], float (&w2s)[ND][4], const float* z2a, const float* z2b,
                                        const float (&da)[NF][4], const StepBufs& s, bf16* gz2lo, int n, int tid,
                                        float eps, AfterFirstSync after_first_sync, UnderGz1 under_gz1) {
  const int lane = tid & 31, warp = tid >> 5, wr = warp & 3, wc = warp >> 2;
  const int g = lane >> 2, t = lane & 3;
  const int row = 16 * wr + 8 * wc + g;
  {
    float z[ND][2], gz[ND][2], rstd[1];
    read_sum2_n<1>(z, z2a, row - g, z2b, row - g, lane, s.b2);
    layer_norm_rows_n<1>(z, eps, rstd);
    grad_z2_rows_n<1>(gz, z, rstd, s.k, s.v, s.eta, s.gamma, s.beta, n, row, lane);
#pragma unroll
    for (int j = 0; j < ND; ++j) {
      const int c = 8 * j + 2 * t;
      uint32_t hi, lo;
      split_bf16(gz[j][0], gz[j][1], hi, lo);
      *reinterpret_cast<uint32_t*>(s.gz2 + swz<D>(row, c)) = hi;
      if (SPLIT) *reinterpret_cast<uint32_t*>(gz2lo + swz<D>(row, c)) = lo;
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float cs = col_sum(gz[j][e]);  // over the 8 rows of this half block
        if (g == 0) s.red2[(2 * wr + wc) * D + c + e] = cs;
      }
    }
  }
  fence_proxy_async();
  __syncthreads();  // all of G_z2 is in shared memory; the Z2 partial (under G_z1) is read
  after_first_sync();

  // G_z1 = (G_z2 W2^T) * gelu'(Z1): A = G_z2 (K-major), B = W2^T (W2's rows of half wc, K-major).
  float gz1[NF][4];
  {
    const uint64_t ah = desc_sw128(s.gz2), al = desc_sw128(gz2lo);
    const uint64_t bh = desc_sw128(s.w2h + wc * FH * D), bl = desc_sw128(s.w2l + wc * FH * D);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < ND / 2; ++kk) {
      wgmma_ss<1, 0, 0>(gz1, ah + 2 * kk, bh + 2 * kk, kk > 0);
      if (SPLIT) {
        wgmma_ss<1, 0, 0>(gz1, al + 2 * kk, bh + 2 * kk, true);
        wgmma_ss<1, 0, 0>(gz1, ah + 2 * kk, bl + 2 * kk, true);
      }
    }
    wgmma_commit();
    under_gz1();
    wgmma_wait<0>();
    fence_acc(gz1);
  }
#pragma unroll
  for (int j = 0; j < NF; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) gz1[j][e] *= da[j][e];
  store_acc_bf16<D>(s.gz1 + wc * M * 64, gz1, 16 * wr, 0, lane);
  store_col_sums(s.red1 + wr * FL + wc * FH, gz1, lane);
  fence_proxy_async();
  __syncthreads();  // A, G_z1, G_z2 and the column sums are in shared memory

  // The update: W2[half wc rows] -= A^T G_z2, W1[:, half wc] -= K^T G_z1 (A operands MN-major).
  {
    const uint64_t a2 = desc_sw128(half_of(s.a, M, wc)), b2 = desc_sw128(s.gz2);
    const uint64_t a1 = desc_sw128(s.k), b1 = desc_sw128(half_of(s.gz1, M, wc));
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < M / 16; ++kk) wgmma_ss<-1, 1, 1>(w2s, a2 + 128 * kk, b2 + 128 * kk, true);
#pragma unroll
    for (int kk = 0; kk < M / 16; ++kk) wgmma_ss<-1, 1, 1>(w1s, a1 + 128 * kk, b1 + 128 * kk, true);
    wgmma_commit();
    wgmma_wait<0>();
    fence_acc(w1s);
    fence_acc(w2s);
  }
  if (tid < FL) {
    s.b1[tid] -= (s.red1[tid] + s.red1[FL + tid]) + (s.red1[2 * FL + tid] + s.red1[3 * FL + tid]);
  } else if (tid < FL + D) {
    const int i = tid - FL;
    const float* r2 = s.red2;
    s.b2[i] -= ((r2[i] + r2[D + i]) + (r2[2 * D + i] + r2[3 * D + i])) +
               ((r2[4 * D + i] + r2[5 * D + i]) + (r2[6 * D + i] + r2[7 * D + i]));
  }
  store_copies_halves<SPLIT>(s, w1s, w2s, warp, lane);
}

// twin_reduce_to (scan_common.cuh) whose CTA partial goes to the peer with st.async: `remote` is the
// shared::cluster address of the peer's tile, `bar` its barrier, which each 8-byte store completes.
template <bool LOCAL>
__device__ __forceinline__ void twin_reduce_push(const float (&acc)[ND][4], float* stage, float* local,
                                                 uint32_t remote, uint32_t bar, int row0, int wr, int wc, int lane) {
  twin_reduce_to<LOCAL>(acc, stage, local, row0, wr, wc, lane,
                        [&](int i, float2 o) { st_async_f2(remote + 4 * i, o, bar); });
}

// ---- the decoupled output ---------------------------------------------------------------------
// Without its output the scan's serial chain is about a fifth shorter (README.md, "Decoupled output"),
// and the output of mini-batch j needs nothing from the scan but the state S_{j+1}. So with a ring
// the scan clusters only publish each state's bf16 copies (hi parts, which the fused output used)
// and biases into a ring in global memory (L2-resident: R slots per head), and the SMs the scan
// leaves idle (132 - 2 B*H on an H100) run output workers: each worker CTA takes output tiles
// (j, bh) in order from a ticket counter, waits for both CTAs' halves of S_{j+1}, copies them in,
// frees the slot and computes out = Q + gamma LN(gelu(Q W1 + b1) W2 + b2) + beta.
//
// Progress: the scan waits only for the slot of tile j - R to be read; tickets are taken in order
// and a worker waits for a tile's state only after it has released the slot of every tile it took
// before, so the earliest unfinished tile always has its state published and its worker free to
// read it. Every worker cluster the host launches is resident with the scan clusters
// (cudaOccupancyMaxActiveClusters), and even one resident worker finishes every tile.
//
// The worker's signalling is kept off its critical path. A tile is ~1.5 us of tensor and GELU work;
// a worker that signals in line spends about three times that per tile (README.md, "Decoupled
// output"): at the top of each tile, with all 256 threads held at a CTA barrier, thread 0 releases
// the slot (a MEMBAR behind its warp's output stores), takes a ticket (an L2 round trip) and polls
// the two ready flags one after the other (two more), then every thread issues its share of
// 18 x 16-byte cp.async. Instead (output_worker):
// - tickets are taken a tile ahead: the atomic for the tile after next is issued at the top of a
//   tile and its result is needed only before the tile's closing barrier;
// - the inputs that do not depend on the scan (the Q tile, gamma, beta) are copied by every thread
//   (cp.async) as soon as the next tile is known, without waiting for its state;
// - the ring part (W1 / W2 hi tiles of both CTAs, 4 x 16 KB, and b1 / b2, 1280 B) is one thread's
//   1-D bulk copies (TMA) completing on the buffer's mbarrier. That thread (FETCH_THREAD) reads the
//   next tile's two ready flags together (relaxed loads: one round trip) while warpgroup 0 finishes
//   the previous tile, checks them at the top of the tile (the usual case in a worker-bound run:
//   the copy then overlaps the whole tile), else rereads and checks again when its warpgroup's
//   products are done, and blocks only after the middle barrier, while its warpgroup is idle;
// - the slot is released by another thread (DONE_THREAD) after the middle barrier: warpgroup 1 is
//   idle there (warpgroup 0 runs the LayerNorm epilogue) and has no global stores outstanding that
//   the release's MEMBAR would wait for.
// Progress as above: FETCH_THREAD never blocks before the middle barrier, so DONE_THREAD's release
// of the current tile never waits for the next tile's state (checking a flag without blocking is
// no wait), and a held but unwaited ticket blocks nobody (a worker waits only for its smallest
// unreleased tile). tests/kernels/test_output_ring_protocol.py models this order. The signalling
// touches no product and no order of a sum: the outputs do not depend on its timing.
constexpr int RING_TILE = kStateTile;            // bf16 elements of one CTA's W1 (or W2) hi tile
constexpr int RING_TILE_BYTES = RING_TILE * 2;
constexpr int RING_B_BYTES = (F + D) * 4;        // one slot's biases: b1 [F], then b2 [D] (fp32)
// Bytes of one tile's ring copy (its mbarrier's transaction count: under the 2^20 - 1 limit).
constexpr uint32_t RING_COPY_BYTES = 2 * CS * RING_TILE_BYTES + RING_B_BYTES;
// A worker's tile buffer (two of them: the next tile loads while this one is computed).
constexpr int WK_W1 = 0;                              // [CS][2 halves][D][64] = W1 [D][F] by 64-column chunks
constexpr int WK_W2 = WK_W1 + CS * RING_TILE_BYTES;   // [CS][FL][D] = W2 [F][D]
constexpr int WK_Q = WK_W2 + CS * RING_TILE_BYTES;    // [M][D]
constexpr int WK_B1 = WK_Q + kTileMD;                 // [F] fp32, then b2 [D] (the ring's bias part)
constexpr int WK_GAMMA = WK_B1 + RING_B_BYTES;        // [D] fp32, then beta [D]
constexpr int WK_BETA = WK_GAMMA + D * 4;
constexpr int WK_BYTES = (WK_BETA + D * 4 + 1023) / 1024 * 1024;
constexpr int WK_STAGE = 2 * WK_BYTES;                // [M][D] fp32 (xidx): warpgroup 1's Zq2 partial
constexpr int WK_TICKET = WK_STAGE + M * D * 4;       // [2] int: the tile of each buffer
constexpr int WK_FULL = (WK_TICKET + 2 * 4 + 7) / 8 * 8;  // [2] mbarriers: buffer b's ring copy landed
constexpr int WK_END = WK_FULL + 2 * 8;
static_assert(WK_W1 % 1024 == 0 && WK_W2 % 1024 == 0 && WK_Q % 1024 == 0 && WK_BYTES % 1024 == 0,
              "the worker's wgmma operand tiles must be 1024-byte aligned in both buffers");
static_assert(RING_TILE_BYTES % 16 == 0 && RING_B_BYTES % 16 == 0 && WK_B1 % 16 == 0 && WK_W2 % 16 == 0,
              "1-D bulk copies move multiples of 16 bytes between 16-byte-aligned addresses");
static_assert(WK_GAMMA % 16 == 0 && WK_BETA % 16 == 0, "gamma / beta are copied in 16-byte chunks");
static_assert(WK_BETA + D * 4 <= WK_BYTES && WK_STAGE % 16 == 0, "the worker's buffers overlap");
static_assert(RING_COPY_BYTES < (1u << 20), "an mbarrier's transaction count is below 2^20");
static_assert(WK_FULL % 8 == 0, "mbarriers are 8-byte aligned");
static_assert(WK_END <= SMEM, "the worker's buffers must fit the scan's shared memory");
static_assert(CS == 2, "a tile's state is published by two ready flags (poll_ready)");
static_assert(D / 2 <= THREADS, "gamma and beta are one 16-byte cp.async per thread");
// The scan thread that publishes states and checks ring slots: lane 0 of warp (0, 1), which pushes
// nothing to the peer (twin_reduce_push: warps (wr, 0) push).
constexpr int RING_THREAD = 128;
// The worker's signalling threads, both in warpgroup 1 (warpgroup 0 runs the LayerNorm epilogue and
// stores the output; it never waits for signalling): FETCH_THREAD (warp (0, 1)) takes tickets, reads
// ready flags and issues the ring's bulk copies; DONE_THREAD (warp (1, 1)) releases ring slots.
constexpr int FETCH_THREAD = 128;
constexpr int DONE_THREAD = 160;

// 1-D bulk copy (TMA, async proxy) of `bytes` from this CTA's shared memory to global memory, in
// this thread's current bulk async-group; 16-byte aligned, bytes a multiple of 16.
__device__ __forceinline__ void bulk_s2g(void* dst, const void* src, uint32_t bytes) {
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n" ::"l"(dst), "r"(smem_u32(src)),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// Wait until this thread's bulk groups are complete: their writes performed (the global data is
// then published by a release after fence.proxy.async.global) and their shared-memory reads done.
__device__ __forceinline__ void bulk_wait_all() {
  asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
}

// RING_THREAD: copy this CTA's copies of the state just computed (s.w1h / s.w2h, 32 KB, exactly the
// swizzled shared-memory bytes, and b1 / b2) into ring slot `slot` of head bh with bulk copies (TMA):
// one thread's five instructions instead of every thread's 16 loads and stores per step, which sat
// on the serial chain right before the next front (~9% of the forward; README.md, "Decoupled output").
// The caller made the copies visible to the async proxy (fence.proxy.async by every writer, then a
// CTA barrier). bulk_wait_all before the publish (a step later) and before the back of the next step
// rewrites the copies (RING_THREAD waits at the top of that step, before the back's barriers).
__device__ __forceinline__ void ring_store(const FwdParams& p, const StepBufs& s, size_t bh, int slot, int rank) {
  const size_t base = (bh * p.ring + slot) * CS + rank;
  bf16* dst = p.ring_w + base * 2 * RING_TILE;
  bulk_s2g(dst, s.w1h, RING_TILE * 2);
  bulk_s2g(dst + RING_TILE, s.w2h, RING_TILE * 2);
  float* b = p.ring_b + (bh * p.ring + slot) * (F + D);
  bulk_s2g(b + rank * FL, s.b1, FL * 4);
  if (rank == 0) bulk_s2g(b + F, s.b2, D * 4);
  bulk_commit();
}

// The backward's recomputation: write this CTA's copies of the current state (s.w1h / s.w2h hi tiles,
// b1 slice, b2) as slot `slot` of head bh's scratch (all threads; the caller made the copies
// visible with a CTA barrier). Layout: FwdParams::st_w / st_b.
__device__ __forceinline__ void dump_state(const FwdParams& p, const StepBufs& s, size_t bh, int slot, int rank,
                                           int tid) {
  const int slots = min(p.G, (p.T + M - 1) / M) + 1;  // per (b, h): a whole chunk's, BwdParams::slots
  const size_t base = (bh * slots + slot) * CS + rank;
  uint4* dst = reinterpret_cast<uint4*>(p.st_w + base * 2 * RING_TILE);
  const uint4* w1 = reinterpret_cast<const uint4*>(s.w1h);
  const uint4* w2 = reinterpret_cast<const uint4*>(s.w2h);
  constexpr int CHUNKS = RING_TILE * 2 / 16;
#pragma unroll
  for (int i = tid; i < CHUNKS; i += THREADS) {
    dst[i] = w1[i];
    dst[CHUNKS + i] = w2[i];
  }
  float* b = p.st_b + base * (FL + D);
  if (tid < FL / 4) {
    reinterpret_cast<float4*>(b)[tid] = reinterpret_cast<const float4*>(s.b1)[tid];
  } else if (tid < FL / 4 + D / 4) {
    reinterpret_cast<float4*>(b + FL)[tid - FL / 4] = reinterpret_cast<const float4*>(s.b2)[tid - FL / 4];
  }
}

// ---- the worker's signalling and copies ----

// A strong read of a ring flag (relaxed, GPU scope), unordered: FETCH_THREAD issues a tile's two
// flag reads back to back, one L2 round trip for the pair (two ld.acquire cost two: each is followed
// by an L1 invalidation that waits for its load), and orders what follows with fence_acquire_gpu
// once they show the state. The loads are not waited for until their values are used.
__device__ __forceinline__ unsigned flag_relaxed(const unsigned* flag) {
  unsigned v;
  asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(flag) : "memory");
  return v;
}

// After a strong read that observed a release, an acquire pattern (PTX memory model): every write
// the releasing thread published is visible to this thread's later operations. On sm_90a it is an
// L1 invalidation (CCTL.IVALL), no MEMBAR. fence.acquire needs PTX ISA 8.6 (CUDA 12.8); older
// compilers get fence.acq_rel, a MEMBAR: as correct, slower.
__device__ __forceinline__ void fence_acquire_gpu() {
#if (__CUDACC_VER_MAJOR__ > 12) || (__CUDACC_VER_MAJOR__ == 12 && __CUDACC_VER_MINOR__ >= 8)
  asm volatile("fence.acquire.gpu;\n" ::: "memory");
#else
  asm volatile("fence.acq_rel.gpu;\n" ::: "memory");
#endif
}

// Orders this thread's generic-proxy accesses of global memory with its async-proxy ones (bulk
// copies) across the fence, both ways.
__device__ __forceinline__ void fence_proxy_async_global() {
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
}

// 1-D bulk copy (TMA, async proxy) of `bytes` from global `src` to this CTA's shared memory at `dst`
// (a shared::cta address, which is also this CTA's shared::cluster address); `bytes` a multiple of
// 16, both addresses 16-byte aligned. Completes `bytes` of the transaction count of mbarrier `bar`.
__device__ __forceinline__ void bulk_g2s(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}

// FETCH_THREAD: read the two ready flags of tile i's head into f0 / f1 (relaxed; not waited for
// here). The tile's state is there once both are >= its mini-batch + 1 (ready_for).
__device__ __forceinline__ void poll_ready(const FwdParams& p, int i, unsigned& f0, unsigned& f1) {
  const unsigned* ready = p.ready + static_cast<size_t>(i % p.batch_heads) * CS;
  f0 = flag_relaxed(ready);
  f1 = flag_relaxed(ready + 1);
}
__device__ __forceinline__ bool ready_for(const FwdParams& p, int i, unsigned f0, unsigned f1) {
  const unsigned need = static_cast<unsigned>(i / p.batch_heads) + 1;
  return f0 >= need && f1 >= need;
}
// FETCH_THREAD: spin until the flags show tile i's state (f0 / f1: the last reads, reread here).
__device__ __forceinline__ void wait_ready(const FwdParams& p, int i, unsigned& f0, unsigned& f1) {
  while (!ready_for(p, i, f0, f1)) {
    __nanosleep(64);
    poll_ready(p, i, f0, f1);
  }
}

// FETCH_THREAD, once its relaxed reads of both ready flags showed tile i's state: copy the tile's
// ring slot (both CTAs' W1 and W2 hi tiles, b1 and b2) into buffer `b` with bulk copies that
// complete on the buffer's mbarrier `bar`.
// Memory ordering: the scan's generic stores of the slot precede its flag_release (cumulative);
// the relaxed reads that saw the flags plus fence.acquire synchronise with those releases, and the
// proxy fence then orders the stores (now visible to this thread's generic proxy) before the bulk
// copies' async-proxy reads. Shared memory: buffer b was last read (generic loads of the epilogue,
// wgmma) in the tile before last; every thread's fence.proxy.async.shared::cta at the top of this
// tile and the CTA barrier after it order those reads before the copies' writes. The consumers wait
// on the mbarrier (complete_tx releases the copied bytes, try_wait acquires them), then read them
// with wgmma (async proxy, as the writes) or generic loads (b2).
__device__ __forceinline__ void ring_copy(const FwdParams& p, char* sm, int b, uint32_t bar, int i) {
  fence_acquire_gpu();
  fence_proxy_async_global();
  mbar_arm(bar, RING_COPY_BYTES);
  const int slot = (i / p.batch_heads) % p.ring;
  const size_t bh = static_cast<size_t>(i % p.batch_heads);
  // A slot is [CS][W1, W2] (ring_store) = 4 contiguous 16 KB tiles; the buffer keeps W1 [CS] then W2 [CS].
  const bf16* src = p.ring_w + (bh * p.ring + slot) * CS * 2 * RING_TILE;
  const uint32_t buf = smem_u32(sm + b * WK_BYTES);
#pragma unroll
  for (int r = 0; r < CS; ++r) {
    bulk_g2s(buf + WK_W1 + r * RING_TILE_BYTES, src + r * 2 * RING_TILE, RING_TILE_BYTES, bar);
    bulk_g2s(buf + WK_W2 + r * RING_TILE_BYTES, src + r * 2 * RING_TILE + RING_TILE, RING_TILE_BYTES, bar);
  }
  bulk_g2s(buf + WK_B1, p.ring_b + (bh * p.ring + slot) * (F + D), RING_B_BYTES, bar);
}

// Start copying the inputs of tile i that do not depend on the scan into buffer `b` (all threads,
// cp.async, generic proxy; the caller commits the group): the Q tile, its rows past T zero-filled,
// and gamma / beta of the tile's head.
__device__ __forceinline__ void worker_load_q(const FwdParams& p, char* sm, int b, int i, int tid) {
  const int j = i / p.batch_heads;
  const size_t bh = static_cast<size_t>(i % p.batch_heads);
  const int h = static_cast<int>(bh % p.H);
  char* buf = sm + b * WK_BYTES;
  if (tid < D / 4) {
    cp_async16(at<float>(buf, WK_GAMMA) + 4 * tid, p.ln_w + h * D + 4 * tid, true);
  } else if (tid < D / 2) {
    const int u = tid - D / 4;
    cp_async16(at<float>(buf, WK_BETA) + 4 * u, p.ln_b + h * D + 4 * u, true);
  }
  const size_t t0 = static_cast<size_t>(j) * M;
  for (int c = tid; c < M * D / 8; c += THREADS) {
    const int row = c / (D / 8), col = (c % (D / 8)) * 8;
    const bool valid = t0 + row < static_cast<size_t>(p.T);
    cp_async16(at<bf16>(buf, WK_Q) + swz<D>(row, col), p.q + (valid ? (bh * p.T + t0 + row) * D + col : 0), valid);
  }
}

// One output worker CTA: tiles from the ticket counter, the next one loading while this one is
// computed (tile k of this CTA in buffer k & 1). Warpgroup wc takes the hidden chunks 2 wc, 2 wc + 1
// (of 64 columns) of Zq2 = sum_c gelu(Q W1[:, c] + b1[c]) W2[c, :]; warpgroup 0 adds warpgroup 1's
// partial and finishes out = Q + gamma LN(Zq2 + b2) + beta. Per tile (current i in buffer b, next i1,
// its ring copy and Q tile going to buffer b ^ 1, freed by the last tile's closing barrier):
//   top      all: wait for this tile's Q (own cp.async) and ring copy (mbarrier); CTA barrier.
//            FETCH_THREAD: if the flags it read during the last tile show i1's state, issue i1's
//            ring copy (else reread them); take the ticket of the tile after next (i2).
//            all: cp.async of i1's Q, gamma, beta.
//   compute  both warpgroups; FETCH_THREAD, its warpgroup's products done: issue i1's ring copy
//            if the flags now show its state (else reread them).
//   middle   CTA barrier (warpgroup 1's partial is staged). DONE_THREAD: release i's slot.
//            FETCH_THREAD: if still not issued, wait for i1's state and issue its copy; publish i2
//            (tickets[b]) and read its flags. Warpgroup 0: the epilogue.
//   closing  CTA barrier: buffer b, the staging and i2 are free / visible.
template <bool FAST_OUT>
__device__ __forceinline__ void output_worker(const FwdParams& p, char* sm, int tid) {
  const int wc = tid >> 7, lane = tid & 31, wr = (tid >> 5) & 3;
  const int g = lane >> 2, t = lane & 3;
  const int n_mb = (p.T + M - 1) / M;
  const long long n_tiles = static_cast<long long>(n_mb) * p.batch_heads;
  float* stage = at<float>(sm, WK_STAGE);
  volatile int* tickets = at<int>(sm, WK_TICKET);
  const uint32_t full = smem_u32(sm + WK_FULL);  // full[b] at full + 8 b: buffer b's ring copy landed
  const bool fetcher = tid == FETCH_THREAD;
  unsigned f0 = 0, f1 = 0;  // FETCH_THREAD: the ready flags of the tile it fetches next, as last read
  bool copied = false;      // FETCH_THREAD: the next tile's ring copy has been issued

  // The first two tiles (one atomic: still in ticket order) and the first one's inputs. Nothing is
  // held yet, so the first tile's state is waited for here.
  if (fetcher) {
    mbar_init(full, 1);  // one arrival per phase: ring_copy's arm, with the copy's bytes
    mbar_init(full + 8, 1);
    fence_proxy_async();  // the initialised barriers are visible to the async proxy (complete_tx)
    const int i0 = static_cast<int>(atomicAdd(p.ticket, 2u));
    tickets[0] = i0;
    tickets[1] = i0 + 1;
  }
  __syncthreads();
  int i = tickets[0], i1 = tickets[1];
  if (i < n_tiles) worker_load_q(p, sm, 0, i, tid);
  cp_async_commit();
  if (fetcher && i < n_tiles) {
    poll_ready(p, i, f0, f1);
    wait_ready(p, i, f0, f1);
    ring_copy(p, sm, 0, full, i);
    if (i1 < n_tiles) poll_ready(p, i1, f0, f1);  // checked at the top of the first tile
  }
  int b = 0;
  for (unsigned k = 0; i < n_tiles; ++k) {
    cp_async_wait<0>();  // this thread's copies of the tile's Q, gamma, beta
    fence_proxy_async();  // ... visible to wgmma after the barrier; this thread's reads of buffer b ^ 1
                          // (last tile) ordered before the bulk copies that refill it
    mbar_wait(full + 8 * b, (k >> 1) & 1);  // the ring copy of this tile (fill k >> 1 of buffer b)
    __syncthreads();
    const int j = i / p.batch_heads;
    const size_t bh = static_cast<size_t>(i % p.batch_heads);
    const bool more = i1 < n_tiles;
    int i2 = i1;  // FETCH_THREAD: the tile after next
    if (fetcher && more) {
      copied = ready_for(p, i1, f0, f1);
      if (copied) {
        ring_copy(p, sm, b ^ 1, full + 8 * (b ^ 1), i1);
      } else {
        poll_ready(p, i1, f0, f1);  // fresh reads for the check after the products
      }
      i2 = static_cast<int>(atomicAdd(p.ticket, 1u));  // used before the closing barrier
    }
    if (more) worker_load_q(p, sm, b ^ 1, i1, tid);  // buffer b ^ 1 was freed by the last barrier
    cp_async_commit();
    char* buf = sm + b * WK_BYTES;
    const bf16* w1 = at<bf16>(buf, WK_W1);
    const bf16* w2 = at<bf16>(buf, WK_W2);
    const bf16* q = at<bf16>(buf, WK_Q);
    const float* b1 = at<float>(buf, WK_B1);
    const float *b2 = b1 + F, *gamma = at<float>(buf, WK_GAMMA), *beta = at<float>(buf, WK_BETA);

    float o[ND][4];
    {
      float z0[NF][4], z1[NF][4];
      const int c0 = 2 * wc;
      wgmma_fence();
      wg_ss<1, 0, 1, false>(z0, desc_sw128(q), desc_sw128(w1 + c0 * D * 64));
      wgmma_commit();
      wg_ss<1, 0, 1, false>(z1, desc_sw128(q), desc_sw128(w1 + (c0 + 1) * D * 64));
      wgmma_commit();
      uint32_t fr[4][4];
      // gelu(z + b1 of chunk c) as bf16 A fragments
      auto activate = [&](float (&z)[NF][4], int c) {
        fence_acc(z);
        add_b1(z, b1 + 64 * c, 0, lane);
#pragma unroll
        for (int jn = 0; jn < NF; ++jn)
#pragma unroll
          for (int e = 0; e < 4; ++e) z[jn][e] = gelu<FAST_OUT>(z[jn][e]);
        to_frags(z, fr);
      };
      wgmma_wait<1>();
      activate(z0, c0);
      wgmma_fence();
      wg_rs<1, 1, false>(o, fr, desc_sw128(w2 + c0 * 64 * D));
      wgmma_commit();
      wgmma_wait<1>();  // Q W1 of the second chunk
      activate(z1, c0 + 1);
      wgmma_fence();
      wg_rs<1, 1, true>(o, fr, desc_sw128(w2 + (c0 + 1) * 64 * D));
      wgmma_commit();
      wgmma_wait<0>();
      fence_acc(o);
    }
    // Second look (no product in flight here): the reads issued at the top have long returned.
    if (fetcher && more && !copied) {
      copied = ready_for(p, i1, f0, f1);
      if (copied) {
        ring_copy(p, sm, b ^ 1, full + 8 * (b ^ 1), i1);
      } else {
        poll_ready(p, i1, f0, f1);
      }
    }
    if (wc == 1) stage_rows(stage, o, wr, lane);
    __syncthreads();
    // Warpgroup 1 is idle until the closing barrier: its two threads signal while warpgroup 0 runs
    // the epilogue. The release of tile i's slot does not depend on FETCH_THREAD (no barrier between
    // them), which may now block on tile i1's state.
    if (tid == DONE_THREAD) {
      // Every thread waited on buffer b's mbarrier before the top barrier: the copy's reads of the
      // slot are complete. The proxy fence orders them (async proxy) before the release, after which
      // the scan overwrites the slot with generic stores.
      fence_proxy_async_global();
      flag_release(p.done + bh * p.ring + j % p.ring, j + 1);
    } else if (fetcher) {
      if (more) {
        if (!copied) {
          wait_ready(p, i1, f0, f1);
          ring_copy(p, sm, b ^ 1, full + 8 * (b ^ 1), i1);
        }
        if (i2 < n_tiles) poll_ready(p, i2, f0, f1);  // checked at the top of the next tile
      }
      tickets[b] = i2;  // buffer b takes tile i2 after next; i2 = i1 (none left) if !more
    }
    if (wc == 0) {  // out = Q + gamma LN(Zq2 + b2) + beta, rows 16 wr + g and + 8 of this warp
      add_staged_rows(o, stage, b2, wr, lane);
      layer_norm_rows(o, p.eps);
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = 16 * wr + g + 8 * half;
        const size_t tok = static_cast<size_t>(j) * M + row;
        if (tok < static_cast<size_t>(p.T)) {
          bf16* out = p.out + (bh * p.T + tok) * D;
#pragma unroll
          for (int jn = 0; jn < ND; ++jn) {
            const int c = 8 * jn + 2 * t;
            const float2 r = unpack_bf16(*reinterpret_cast<const uint32_t*>(q + swz<D>(row, c)));
            *reinterpret_cast<uint32_t*>(out + c) = pack_bf16(r.x + gamma[c] * o[jn][2 * half] + beta[c],
                                                              r.y + gamma[c + 1] * o[jn][2 * half + 1] + beta[c + 1]);
          }
        }
      }
    }
    __syncthreads();  // buffer b and the staging are free for the tile after next; tickets[b] is set
    i = i1;
    i1 = tickets[b];
    b ^= 1;
  }
  cp_async_wait<0>();
}

// Iteration j of the kernel: the back of step j (LayerNorm, G_z2, G_z1, update -> state S_{j+1}),
// then one fused pass against S_{j+1}: the front (Z1, A, Z2 partial) of step j + 1 and the output's
// Zq2 partial of mini-batch j. Both partials cross the cluster in ONE exchange (not two cluster
// barriers per mini-batch, one for Z2 and one for Zq2). CTA r finishes only the output rows
// [32 r, 32 r + 32) (warps wr = 2r, 2r + 1), so only the other half of its Zq2 partial crosses.
//
// Off the serial chain: the Z2 partial is pushed first and the Zq2 work follows while it is in
// flight; the output rows of mini-batch j are finished in iteration j + 1, while G_z1 is on the
// tensor cores (b2 is still S_{j+1}'s there). So each part of an exchange has its own mbarrier.
//
// The exchange is point to point: the peer's st.async stores complete bytes on my mbarriers (armed
// with the bytes to expect), and my warps wait on them with acquire; no cluster barrier per
// mini-batch. Exchange e (0 <= e <= n_mb) lands in receive buffer e & 1: the Z2 partial of step e
// (e < n_mb; full_z[e & 1], phase (e >> 1) & 1) and the peer's Zq2 partial of my output rows of
// mini-batch e - 1 (e >= 1; full_q[e & 1], phase ((e - 1) >> 1) & 1). A push never overwrites an
// unread partial: a CTA pushes exchange e only after it has received the Z2 part of exchange e - 1,
// which its peer pushes only after CTA barriers that follow all its reads of exchange e - 2.
//
// DECOUPLED: the scan computes no output; with p.ring_w it publishes every state into the ring
// for the output workers (blockIdx.y >= p.batch_heads), without it (the checkpoint-only pass) it just
// scans.
template <bool SPLIT, bool FAST_INNER, bool FAST_OUT, bool DECOUPLED>
__global__ void __cluster_dims__(CS, 1, 1) __launch_bounds__(THREADS, 1) ttt_mlp_fwd_kernel(const FwdParams p) {
  extern __shared__ __align__(128) char sm_raw[];
  char* sm = align_1024(sm_raw);
  if (DECOUPLED && static_cast<int>(blockIdx.y) >= p.batch_heads) {
    output_worker<FAST_OUT>(p, sm, threadIdx.x);
    return;
  }
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wr = warp & 3, wc = warp >> 2;
  const int g = lane >> 2, t = lane & 3;
  const int rank = static_cast<int>(cluster_rank());
  const size_t bh = blockIdx.y;
  const int h = static_cast<int>(bh % p.H);
  const int f_base = rank * FL;      // first hidden column of this CTA
  const bool my_rows = (wr >> 1) == rank;  // this warp's 16 token rows are among the output rows I finish
  const int half_row0 = (wr >> 1) * HALF;  // first row of the half this warp's rows belong to

  StepBufs s;
  s.w1h = at<bf16>(sm, OFF_W1H);
  s.w1l = at<bf16>(sm, OFF_W1L);
  s.w2h = at<bf16>(sm, OFF_W2H);
  s.w2l = at<bf16>(sm, OFF_W2L);
  s.a = at<bf16>(sm, OFF_A);
  s.gz1 = at<bf16>(sm, OFF_GZ1);
  s.gz2 = at<bf16>(sm, OFF_GZ2);
  s.x = nullptr;
  s.b1 = at<float>(sm, OFF_B1);
  s.b2 = at<float>(sm, OFF_B2);
  float* gamma = at<float>(sm, OFF_GAMMA);
  float* beta = at<float>(sm, OFF_BETA);
  s.gamma = gamma;
  s.beta = beta;
  s.red1 = at<float>(sm, OFF_RED1);
  s.red2 = at<float>(sm, OFF_RED2);
  float* z2_mine = at<float>(sm, OFF_GZ1);
  float* zq_stage = at<float>(sm, OFF_ZQ);
  float* recv = at<float>(sm, OFF_RECV);
  const uint32_t peer_recv = map_rank_u32(smem_u32(recv), rank ^ 1);
  const uint32_t full_z = smem_u32(sm + OFF_FULL), full_q = full_z + 16;  // [b] at + 8 b
  const uint32_t peer_full_z = map_rank_u32(full_z, rank ^ 1), peer_full_q = peer_full_z + 16;
  bf16* gz2lo = reinterpret_cast<bf16*>(zq_stage + (rank ^ 1) * HALF * D);

  float w1s[NF][4], w2s[ND][4];
  if (p.from_ck >= 0) {  // the backward's recomputation of one chunk: from its checkpoint
    const size_t c = bh * p.n_ck + p.from_ck;
    load_state(w1s, w2s, p.ck_w1 + c * D * F, p.ck_w2 + c * F * D, f_base, warp, lane);
    for (int i = tid; i < FL; i += THREADS) s.b1[i] = p.ck_b1[c * F + f_base + i];
    for (int i = tid; i < D; i += THREADS) s.b2[i] = p.ck_b2[c * D + i];
  } else {
    load_state(w1s, w2s, p.w1 + static_cast<size_t>(h) * D * F, p.w2 + static_cast<size_t>(h) * F * D, f_base, warp,
               lane);
    for (int i = tid; i < FL; i += THREADS) s.b1[i] = p.b1[static_cast<size_t>(h) * F + f_base + i];
    for (int i = tid; i < D; i += THREADS) s.b2[i] = p.b2[h * D + i];
  }
  for (int i = tid; i < D; i += THREADS) {
    gamma[i] = p.ln_w[h * D + i];
    beta[i] = p.ln_b[h * D + i];
  }
  store_copies_halves<SPLIT>(s, w1s, w2s, warp, lane);

  // Steps (and exchanges) count from 0 within this launch; mini-batch mb0 + step is scanned.
  const int n_mb = p.n_mb;
  const int mb0 = p.mb0;
  // Bytes the peer pushes per exchange: its Z2 partial (all rows) and its Zq2 partial of my rows.
  // The output is computed (and exchanged) even without p.with_out, which only skips its store: no
  // runtime branch around the wgmma calls (see the peeled iteration below).
  constexpr uint32_t Z2_BYTES = M * D * 4, ZQ_BYTES = HALF * D * 4;
  if (tid == 0) {
    for (int i = 0; i < 4; ++i) mbar_init(full_z + 8 * i, 1);
    fence_mbar_init();
    mbar_arm(full_z, Z2_BYTES);                     // exchange 0
    if (n_mb > 1) mbar_arm(full_z + 8, Z2_BYTES);   // exchange 1
    if (!DECOUPLED) {
      mbar_arm(full_q + 8, ZQ_BYTES);               // exchange 1
      if (n_mb > 1) mbar_arm(full_q, ZQ_BYTES);     // exchange 2
    }
  }
  load_tiles<!DECOUPLED>(p, sm, bh, mb0 * M, 0, tid);
  if (n_mb > 1) load_tiles<!DECOUPLED>(p, sm, bh, (mb0 + 1) * M, 1, tid);
  cp_async_wait<0>();
  fence_proxy_async();
  __syncthreads();
  // Every CTA of the cluster is running before anyone touches a peer's shared memory.
  cluster_sync();

  // Exchange 0: the Z2 partial of step 0 (into receive buffer 0).
  float da[NF][4], z2[ND][4];
  s.k = at<bf16>(sm, OFF_K);
  {
    float za[NF][4];
    wgmma_fence();
    issue_x_w1<SPLIT>(za, s.k, s, wc);
    wgmma_commit();
    wgmma_wait<0>();
    fence_acc(za);
    front_wg<SPLIT, FAST_INNER>(za, da, z2, s, wr, wc, lane);
  }
  twin_reduce_push<true>(z2, z2_mine, z2_mine, peer_recv, peer_full_z, 0, wr, wc, lane);
  named_barrier(1 + wr, 64);  // warp (wr, 0)'s local partial is visible to its twin

  const int orow = 16 * wr + 8 * wc + g;  // the output row this lane finishes (if my_rows)
  uint32_t qres[ND];                      // its residual Q (bf16 pairs) of the pending mini-batch
  // Finish my output rows of mini-batch mb, one row per lane: out = Q + gamma LN(Zq2 + b2) + beta with
  // Zq2 = my CTA's partial (zq_stage) + the peer's (exchange mb + 1) and b2 of S_{mb+1}.
  auto finish_output = [&](const int mb) {
    const int e = mb + 1, eb = e & 1;
    mbar_wait(full_q + 8 * eb, (mb >> 1) & 1);
    if (tid == 64 * rank && e + 2 <= n_mb) mbar_arm(full_q + 8 * eb, ZQ_BYTES);  // warp (2 rank, 0) waited
    float o[ND][2], rstd[1];
    read_sum2_n<1>(o, zq_stage, orow - g, recv + eb * RECV + RECV_Z2, orow - g - half_row0, lane, s.b2);
    layer_norm_rows_n<1>(o, p.eps, rstd);
    if (p.with_out && mb * M + orow < p.T) {
      bf16* out = p.out + (bh * p.T + static_cast<size_t>(mb) * M + orow) * D;
#pragma unroll
      for (int j = 0; j < ND; ++j) {
        const int c = 8 * j + 2 * t;
        const float2 q = unpack_bf16(qres[j]);
        *reinterpret_cast<uint32_t*>(out + c) =
            pack_bf16(q.x + gamma[c] * o[j][0] + beta[c], q.y + gamma[c + 1] * o[j][1] + beta[c + 1]);
      }
    }
  };

  // One iteration per mini-batch, with NEXT (a step follows) a compile-time constant: a runtime
  // `next` around the wgmma calls makes ptxas serialise every wgmma (C7520, "WG.AR in divergent
  // path"), although it is uniform. So the last iteration is peeled off.
  auto iteration = [&](const int step, auto next_tag) {
    constexpr bool next = decltype(next_tag)::value;
    const int buf = step & 1;
    const int t0 = (mb0 + step) * M;
    const int n = min(M, p.T - t0);
    s.k = at<bf16>(sm, OFF_K) + buf * M * D;
    s.v = at<bf16>(sm, OFF_V) + buf * M * D;
    s.eta = at<float>(sm, OFF_ETA) + buf * M;
    const bf16* sq = at<bf16>(sm, OFF_Q) + buf * M * D;

    if (p.st_w != nullptr) dump_state(p, s, bh, step, rank, tid);  // the backward's recomputation
    if (p.save && step % p.G == 0) {  // checkpoint: the state before this mini-batch
      const size_t c = bh * p.n_ck + step / p.G;
      store_state(p.ck_w1 + c * D * F, p.ck_w2 + c * F * D, w1s, w2s, f_base, warp, lane);
      for (int i = tid; i < FL; i += THREADS) p.ck_b1[c * F + f_base + i] = s.b1[i];
      if (rank == 0)
        for (int i = tid; i < D; i += THREADS) p.ck_b2[c * D + i] = s.b2[i];
    }

    // ---- back of step `step`: Z2 = my partial + the peer's (exchange `step`, buffer step & 1); the
    // CTA barrier after G_z2 separates the last z2_mine read from the G_z1 stores over it ----
    // The state for output tile step - 1 went into the ring during the previous iteration (RING_THREAD's
    // bulk copies): publish it once they are complete (a step late, so this rarely waits), and
    // read the flag of the ring slot this step fills. Thread RING_THREAD does both while its warp
    // waits for the exchange: the release is a MEMBAR.ALL.GPU, which on a warp that pushed partials to
    // the peer would wait for those remote stores. The flag read is relaxed, its acquire fence comes
    // after the back: an ld.acquire here would make the warp wait for the load's round trip before
    // the back (~3% of the forward; README.md, "Decoupled output"); a relaxed load is waited for only
    // where its value is used.
    unsigned slot_seen = 0;
    if (DECOUPLED && tid == RING_THREAD && p.ring_w != nullptr) {
      if (step >= 1) {
        bulk_wait_all();  // the last step's ring store has landed (and is done reading the copies)
        flag_release(p.ready + bh * CS + rank, step);
      }
      if (step >= p.ring) slot_seen = flag_relaxed(p.done + bh * p.ring + step % p.ring);
    }
    mbar_wait(full_z + 8 * buf, (step >> 1) & 1);  // the Z2 part of exchange `step` has landed
    if (tid == 0 && step + 2 < n_mb) mbar_arm(full_z + 8 * buf, Z2_BYTES);
    back_wg<SPLIT>(
        w1s, w2s, z2_mine, recv + buf * RECV, da, s, gz2lo, n, tid, p.eps,
        [&] {
          // Every warp is past its last read of mini-batch step - 1's tiles (the output's residual Q
          // is in registers): refill that buffer with mini-batch step + 1, waited for at the end of
          // this phase.
          if (step >= 1 && step + 1 < n_mb) load_tiles<!DECOUPLED>(p, sm, bh, t0 + M, buf ^ 1, tid);
        },
        [&] {
          if (!DECOUPLED && step >= 1 && my_rows) finish_output(step - 1);
        });
    // Ring slot step % R is free once the workers have read the state of tile step - R: the relaxed
    // read showed it (then the acquire fence orders the ring store after the workers' reads), or wait.
    // The proxy fence orders that acquire before the ring store's bulk (async-proxy) writes.
    if (DECOUPLED && tid == RING_THREAD && p.ring_w != nullptr && step >= p.ring) {
      if (slot_seen < static_cast<unsigned>(step - p.ring + 1)) {
        flag_wait_geq(p.done + bh * p.ring + step % p.ring, step - p.ring + 1);
      } else {
        fence_acquire_gpu();
      }
      fence_proxy_async_global();
    }
    cp_async_wait<0>();  // the next mini-batch's tiles
    fence_proxy_async();
    __syncthreads();     // new state copies, biases and those tiles are visible to every warp
    if constexpr (DECOUPLED) {
      if (p.ring_w != nullptr && tid == RING_THREAD) ring_store(p, s, bh, step % p.ring, rank);  // S_{step+1}
      if (next) {
        const bf16* k_next = at<bf16>(sm, OFF_K) + (buf ^ 1) * M * D;
        float za[NF][4];
        wgmma_fence();
        issue_x_w1<SPLIT>(za, k_next, s, wc);
        wgmma_commit();
        wgmma_wait<0>();
        fence_acc(za);
        s.k = k_next;
        front_wg<SPLIT, FAST_INNER>(za, da, z2, s, wr, wc, lane);
        twin_reduce_push<true>(z2, z2_mine, z2_mine, peer_recv + 4 * (buf ^ 1) * RECV, peer_full_z + 8 * (buf ^ 1), 0,
                               wr, wc, lane);
      }
      __syncthreads();  // the local Z2 partial is visible
      return;
    }

    // ---- fused pass against the updated state: the front of the next step (its Z2 partial is
    // pushed first), then the output's Zq2 partial of this mini-batch; exchange step + 1 (buffer
    // (step + 1) & 1) ----
    const uint32_t rbuf = peer_recv + 4 * (buf ^ 1) * RECV;
    float zq[NF][4];
    if (next) {
      const bf16* k_next = at<bf16>(sm, OFF_K) + (buf ^ 1) * M * D;
      float za[NF][4];
      wgmma_fence();
      issue_x_w1<SPLIT>(za, k_next, s, wc);
      wgmma_commit();
      issue_x_w1<false>(zq, sq, s, wc);  // Q W1 runs under the front's element-wise work
      wgmma_commit();
      wgmma_wait<1>();
      fence_acc(za);
      s.k = k_next;
      front_wg<SPLIT, FAST_INNER>(za, da, z2, s, wr, wc, lane);  // its final wait also completes Q W1
      twin_reduce_push<true>(z2, z2_mine, z2_mine, rbuf, peer_full_z + 8 * (buf ^ 1), 0, wr, wc, lane);
    } else {
      wgmma_fence();
      issue_x_w1<false>(zq, sq, s, wc);
      wgmma_commit();
      wgmma_wait<0>();
    }
    fence_acc(zq);
    {
      float o[ND][4];
      add_b1(zq, s.b1, wc, lane);
#pragma unroll
      for (int j = 0; j < NF; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) zq[j][e] = gelu<FAST_OUT>(zq[j][e]);
      xs_times_w2<false>(o, zq, s, wc);
      // my rows: the CTA's partial stays in zq_stage; the other half goes to the peer's buffer.
      if (my_rows) {
        twin_reduce<true, false>(o, zq_stage, zq_stage, nullptr, 0, wr, wc, lane);
#pragma unroll
        for (int j = 0; j < ND; ++j) qres[j] = *reinterpret_cast<const uint32_t*>(sq + swz<D>(orow, 8 * j + 2 * t));
      } else {
        twin_reduce_push<false>(o, zq_stage, nullptr, rbuf + 4 * RECV_Z2, peer_full_q + 8 * (buf ^ 1), half_row0, wr,
                                wc, lane);
      }
    }
    // Every warp's local partials (z2_mine, my rows of zq_stage) are visible, and every read of the
    // twin staging in zq_stage is done before the next back writes G_z2's lo tile over half of it.
    __syncthreads();
    if (!next && my_rows) finish_output(step);
  };
  for (int step = 0; step + 1 < n_mb; ++step) iteration(step, std::true_type{});
  iteration(n_mb - 1, std::false_type{});
  if (p.st_w != nullptr) dump_state(p, s, bh, n_mb, rank, tid);  // the state after the last step
  if (DECOUPLED && tid == RING_THREAD && p.ring_w != nullptr) {
    bulk_wait_all();
    flag_release(p.ready + bh * CS + rank, n_mb);
  }
  // Both CTAs stay resident until every push has landed: each received its last exchange before
  // arriving here.
  cluster_sync();
}

}  // namespace fwd
}  // namespace sm90
}  // namespace tttgraph

namespace {
using FwdKernel = void (*)(const tttgraph::FwdParams);

FwdKernel fwd_kernel(int variant, bool decoupled) {
  using namespace tttgraph::sm90::fwd;
  switch (variant * 2 + (decoupled ? 1 : 0)) {
    case 0: return ttt_mlp_fwd_kernel<false, false, false, false>;
    case 1: return ttt_mlp_fwd_kernel<false, false, false, true>;
    case 2: return ttt_mlp_fwd_kernel<true, false, false, false>;
    case 3: return ttt_mlp_fwd_kernel<true, false, false, true>;
    case 6: return ttt_mlp_fwd_kernel<true, false, true, false>;
    case 7: return ttt_mlp_fwd_kernel<true, false, true, true>;
    case 12: return ttt_mlp_fwd_kernel<false, true, true, false>;
    case 13: return ttt_mlp_fwd_kernel<false, true, true, true>;
    case 14: return ttt_mlp_fwd_kernel<true, true, true, false>;
    case 15: return ttt_mlp_fwd_kernel<true, true, true, true>;
    default: return nullptr;
  }
}
}  // namespace

// Launch on `stream`; returns the cudaError_t of the launch. batch_heads = B * H scan clusters, plus
// `workers` output-worker clusters when params->ring_w is set (the decoupled output). Without an
// output (params->with_out == 0) the decoupled kernel runs with no ring: the scan alone.
// variant: bit 0 split-bf16 state-update products, bit 1 tanh.approx in the output's GELU, bit 2
// tanh.approx in the inner step's GELU (see ttt_mlp.h).
extern "C" int tttgraph_ttt_mlp_fwd_sm90(const tttgraph::FwdParams* params, int batch_heads, int variant,
                                          int workers, cudaStream_t stream) {
  using namespace tttgraph::sm90::fwd;
  using tttgraph::sm90::THREADS;
  using tttgraph::sm90::CS;
  const bool decoupled = params->ring_w != nullptr || !params->with_out;
  if (params->ring_w != nullptr && workers < 1) return static_cast<int>(cudaErrorInvalidValue);
  // A part of the sequence (the backward's recomputation) is scanned without output or checkpoints.
  if (params->n_mb < 1 || (params->mb0 != 0 && (params->with_out || params->save)))
    return static_cast<int>(cudaErrorInvalidValue);
  FwdKernel kernel = fwd_kernel(variant, decoupled);
  if (kernel == nullptr) return static_cast<int>(cudaErrorInvalidValue);
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM_LAUNCH);
  if (err != cudaSuccess) return static_cast<int>(err);
  const int clusters = batch_heads + (params->ring_w != nullptr ? workers : 0);
  kernel<<<dim3(CS, clusters), THREADS, SMEM_LAUNCH, stream>>>(*params);
  return static_cast<int>(cudaGetLastError());
}

// Worker clusters for the decoupled output: the clusters of this kernel that can be resident at once,
// less the scan's. Every launched cluster must be resident at once (the scan waits for the workers);
// with fewer than MIN_WORKER_WARPGROUPS_PER_HEAD worker warpgroups per head the workers could not
// keep up with the scan (each warpgroup needs ~1 tile per scan step), so the fused kernel is better.
extern "C" int tttgraph_ttt_mlp_fwd_sm90_workers(int batch_heads, int variant) {
  using namespace tttgraph::sm90::fwd;
  using tttgraph::sm90::THREADS;
  using tttgraph::sm90::CS;
  FwdKernel kernel = fwd_kernel(variant, true);
  if (kernel == nullptr) return -static_cast<int>(cudaErrorInvalidValue);
  // The resident clusters depend on the device and the kernel only: asked once per (device, variant)
  // (the query and the attribute call cost tens of microseconds per forward otherwise).
  constexpr int kDevices = 64, kVariants = 8;
  static std::atomic<int> cache[kDevices][kVariants];  // 0: not asked yet, else resident + 1
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return -static_cast<int>(err);
  int resident = device < kDevices ? cache[device][variant].load() - 1 : -1;
  if (resident < 0) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM_LAUNCH);
    if (err != cudaSuccess) return -static_cast<int>(err);
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(CS, batch_heads + 1);
    cfg.blockDim = dim3(THREADS);
    cfg.dynamicSmemBytes = SMEM_LAUNCH;
    err = cudaOccupancyMaxActiveClusters(&resident, kernel, &cfg);
    if (err != cudaSuccess) return -static_cast<int>(err);
    if (device < kDevices) cache[device][variant].store(resident + 1);
  }
  const int workers = resident - batch_heads;
  constexpr int MIN_WORKER_WARPGROUPS_PER_HEAD = 1;
  if (workers * CS * 2 < MIN_WORKER_WARPGROUPS_PER_HEAD * batch_heads) return 0;
  return workers;
}
