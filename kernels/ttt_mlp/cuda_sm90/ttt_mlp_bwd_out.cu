// The output's backward of one checkpoint chunk, for every (mini-batch, batch, head) tile of
// the chunk at once: independent tiles spread over all SMs, taken off the reverse scan's serial
// chain (ttt_mlp_bwd.cu). Launched per chunk after the forward's scan has written the chunk's states
// (FwdParams::st_w / st_b) and before the reverse launch of that chunk.
//
// Tile (s, bh): mini-batch j = chunk * G + s of head bh, with S' = S_{j+1} (the state after step j:
// scratch slot s + 1), Q_j and dO_j:
//   Zq1 = Q W1' + b1', Aq = gelu(Zq1), Zq2 = Aq W2' + b2', xq = LN(Zq2) (rq: its 1 / std);
//   dbeta_j = sum dO, dgamma_j = sum dO xq (column sums over the tile's rows);
//   dZq2 = rq P(gamma dO), P(x) = x - mean(x) - xq mean(x xq) (per row);
//   dZq1 = (dZq2 W2'^T) gelu'(Zq1);
//   dQ = dO + dZq1 W1'^T: the whole gradient of Q, written here.
// The reverse scan adds the output's share of dS' before step j's update backward; it needs
//   dW2' += Aq^T dZq2, dW1' += Q^T dZq1 (it runs these two products itself, from the bf16 operands
//   stored here: 72 KB per tile instead of 128 KB of fp32 products), db1' += sum dZq1, db2' +=
//   sum dZq2, and adds dgamma_j / dbeta_j to its sums.
// Outputs per tile (BwdParams::obt / obf): obt [Aq: 4 hidden chunks][M][64] [dZq1: 4 chunks][M][64]
// [dZq2: M][64] bf16, each [M][64] tile 128B-swizzled (swz<64>) as the reverse pass's shared-memory
// tiles are, so it copies them as they are; obf [db1 F][db2 D][dgamma D][dbeta D] fp32.
//
// One CTA of 2 warpgroups per tile; warpgroup wc takes the hidden chunks 2 wc, 2 wc + 1 (64 columns
// each), warpgroup 0 adds warpgroup 1's row-sum partials (Zq2, dQ) and does the row work. The
// products are formed as the reverse pass forms its own (bf16 operands, fp32 accumulation), so the
// gradients keep its numerics; only the summation order of Zq2 and dQ over the hidden chunks differs.
// Persistent CTAs walk the tiles with a stride of the grid, the next tile's inputs loading (cp.async,
// double-buffered) while this one is computed. Deterministic: fixed orders, no atomics.
#include <cuda_runtime.h>

#include <algorithm>

#include "scan_common.cuh"
#include "ttt_mlp.h"
#include "wgmma.cuh"

namespace tttgraph {
namespace sm90 {
namespace bwd_out {

constexpr int TILE = kObTile;  // the output tiles' layout: scan_common.cuh
constexpr int RING_TILE = kStateTile;
// One input buffer (two of them): W1 [F/64 chunks][D][64] (chunk c = rank c / 2's half c % 2, as the
// scan's shared memory holds it), W2 [F][D], Q [M][D] (swizzled, wgmma operand), dO [M][D]
// (row-major), b1 [F], b2 [D], gamma [D] fp32.
constexpr int B_W1 = 0;
constexpr int B_W2 = B_W1 + F * D * 2;
constexpr int B_Q = B_W2 + F * D * 2;
constexpr int B_DO = B_Q + kTileMD;
constexpr int B_B1 = B_DO + kTileMD;
constexpr int B_BYTES = (B_B1 + (F + 2 * D) * 4 + 1023) / 1024 * 1024;
constexpr int OFF_U = 2 * B_BYTES;              // dZq2 bf16 [M][D] swizzled: the A operand of dZq2 W2'^T
constexpr int OFF_STAGE = OFF_U + kTileMD;      // fp32 [M][D] (xidx): warpgroup 1's partial of Zq2, then of dQ
constexpr int OFF_RED1 = OFF_STAGE + M * D * 4;  // [4][F]: column sums of dZq1 per warp row group
constexpr int OFF_RED2 = OFF_RED1 + 4 * F * 4;   // [4][D]: of dZq2
constexpr int OFF_REDG = OFF_RED2 + 4 * D * 4;   // [4][D]: of dO xq (dgamma)
constexpr int OFF_REDB = OFF_REDG + 4 * D * 4;   // [4][D]: of dO (dbeta)
constexpr int SMEM = OFF_REDB + 4 * D * 4;
constexpr int SMEM_LAUNCH = SMEM + 1024;  // room to align the base to 1024 bytes
static_assert(B_Q % 1024 == 0 && B_W2 % 1024 == 0 && B_BYTES % 1024 == 0 && OFF_U % 1024 == 0,
              "wgmma operand tiles must be 1024-byte aligned");
static_assert(SMEM_LAUNCH <= 227 * 1024, "shared memory over the sm_90 per-block limit");

// Start copying tile i's inputs into buffer `buf` (all threads; the caller commits the group).
__device__ __forceinline__ void fetch(const BwdParams& p, char* buf, long long i, int tid) {
  const int s = static_cast<int>(i / p.batch_heads);
  const size_t bh = static_cast<size_t>(i % p.batch_heads);
  const int h = static_cast<int>(bh % p.H);
  const size_t slot = (bh * p.slots + s + 1) * CS;  // S' = the state after step s of the chunk
  const bf16* src = p.st_w + slot * 2 * RING_TILE;
  constexpr int CH = RING_TILE * 2 / 16;  // 16-byte chunks of one CTA's W1 (or W2) tile
  for (int c = tid; c < CH * CS; c += THREADS) {
    const int r = c / CH, o = (c % CH) * 8;
    cp_async16(at<bf16>(buf, B_W1) + r * RING_TILE + o, src + r * 2 * RING_TILE + o, true);
    cp_async16(at<bf16>(buf, B_W2) + r * RING_TILE + o, src + r * 2 * RING_TILE + RING_TILE + o, true);
  }
  float* b1 = at<float>(buf, B_B1);
  const float* sb = p.st_b + slot * (FL + D);  // per CTA: its b1 slice, then b2
  if (tid < F / 4) {  // b1: CTA 0's slice, then CTA 1's
    const int r = tid / (FL / 4), u = tid % (FL / 4);
    cp_async16(b1 + r * FL + 4 * u, sb + r * (FL + D) + 4 * u, true);
  } else if (tid < F / 4 + D / 4) {  // b2 (CTA 0's copy)
    const int u = tid - F / 4;
    cp_async16(b1 + F + 4 * u, sb + FL + 4 * u, true);
  } else if (tid < F / 4 + D / 2) {  // gamma
    const int u = tid - F / 4 - D / 4;
    cp_async16(b1 + F + D + 4 * u, p.ln_w + h * D + 4 * u, true);
  }
  const size_t t0 = static_cast<size_t>(p.chunk * p.G + s) * M;
  for (int c = tid; c < M * D / 8; c += THREADS) {
    const int row = c / (D / 8), col = (c % (D / 8)) * 8;
    const bool valid = t0 + row < static_cast<size_t>(p.T);  // rows past T read as zeros
    const size_t g = valid ? (bh * p.T + t0 + row) * D + col : 0;
    cp_async16(at<bf16>(buf, B_Q) + swz<D>(row, col), p.q + g, valid);
    cp_async16(at<bf16>(buf, B_DO) + row * D + col, p.dout + g, valid);
  }
}

template <bool FAST>
__global__ void __launch_bounds__(THREADS, 1) ttt_mlp_bwd_out_kernel(const BwdParams p) {
  extern __shared__ __align__(128) char sm_raw[];
  char* sm = align_1024(sm_raw);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wr = warp & 3, wc = warp >> 2;
  const int g = lane >> 2, t = lane & 3;
  const int n_mb = (p.T + M - 1) / M;
  const int j0 = p.chunk * p.G;
  const int steps = min(p.G, n_mb - j0);
  const long long n_tiles = static_cast<long long>(steps) * p.batch_heads;
  bf16* sU = at<bf16>(sm, OFF_U);
  float* stage = at<float>(sm, OFF_STAGE);
  float* red1 = at<float>(sm, OFF_RED1);
  float* red2 = at<float>(sm, OFF_RED2);
  float* redg = at<float>(sm, OFF_REDG);
  float* redb = at<float>(sm, OFF_REDB);

  int b = 0;
  long long i = blockIdx.x;
  if (i < n_tiles) fetch(p, sm, i, tid);
  cp_async_commit();
  while (i < n_tiles) {
    const long long next = i + gridDim.x;
    // Buffer b ^ 1 was last read before the closing barrier of the previous tile.
    if (next < n_tiles) fetch(p, sm + (b ^ 1) * B_BYTES, next, tid);
    cp_async_commit();
    cp_async_wait<1>();  // this tile's inputs
    fence_proxy_async();  // cp.async writes (generic proxy) -> wgmma operand reads (async proxy)
    __syncthreads();

    const int s = static_cast<int>(i / p.batch_heads);
    const size_t bh = static_cast<size_t>(i % p.batch_heads);
    const int t0 = (j0 + s) * M, n = min(M, p.T - t0);
    char* buf = sm + b * B_BYTES;
    const bf16* w1 = at<bf16>(buf, B_W1);
    const bf16* w2 = at<bf16>(buf, B_W2);
    const bf16* q = at<bf16>(buf, B_Q);
    const bf16* dob = at<bf16>(buf, B_DO);
    const float* b1 = at<float>(buf, B_B1);
    const float *b2 = b1 + F, *gamma = b2 + D;
    const size_t tile = bh * (p.slots - 1) + s;  // the scratch holds slots - 1 = min(G, n_mb) tiles per (b, h)
    bf16* obt = p.obt + tile * kObTiles * TILE;
    float* obf = p.obf + tile * kObFloats;
    const int c0 = 2 * wc;  // this warpgroup's hidden chunks: c0, c0 + 1

    // ---- Zq1, Aq, gelu'(Zq1) of this warpgroup's chunks; its partial of Zq2 = Aq W2' ----
    float gq[2][NF][4];
    float o[ND][4];
    {
      float z0[NF][4], z1[NF][4];
      wgmma_fence();
      wg_ss<1, 0, 1, false>(z0, desc_sw128(q), desc_sw128(w1 + c0 * D * 64));
      wgmma_commit();
      wg_ss<1, 0, 1, false>(z1, desc_sw128(q), desc_sw128(w1 + (c0 + 1) * D * 64));
      wgmma_commit();
      // gelu(z + b1) as bf16 A fragments (also stored: Aq for the reverse pass), gelu' into d
      auto activate = [&](float (&z)[NF][4], float (&d)[NF][4], uint32_t (&fr)[4][4], int c) {
        fence_acc(z);
        add_b1(z, b1 + 64 * c, 0, lane);
#pragma unroll
        for (int jn = 0; jn < NF; ++jn)
#pragma unroll
          for (int e = 0; e < 4; ++e) gelu_d1<FAST>(z[jn][e], z[jn][e], d[jn][e]);
        to_frags(z, fr);
        store_frags_bf16(obt + c * TILE, fr, 16 * wr, lane);
      };
      uint32_t fa0[4][4], fa1[4][4];  // separate: the first product may still read fa0
      wgmma_wait<1>();
      activate(z0, gq[0], fa0, c0);
      wgmma_fence();
      wg_rs<1, 1, false>(o, fa0, desc_sw128(w2 + c0 * 64 * D));
      wgmma_commit();
      wgmma_wait<1>();  // Q W1 of the second chunk
      activate(z1, gq[1], fa1, c0 + 1);
      wgmma_fence();
      wg_rs<1, 1, true>(o, fa1, desc_sw128(w2 + (c0 + 1) * 64 * D));
      wgmma_commit();
      wgmma_wait<0>();
      fence_acc(o);
    }
    if (wc == 1) stage_rows(stage, o, wr, lane);
    __syncthreads();

    // ---- warpgroup 0: Zq2, its LayerNorm, dgamma / dbeta sums, dZq2 = rq P(gamma dO) ----
    if (wc == 0) {
      const int r0 = 16 * wr + g;
      add_staged_rows(o, stage, b2, wr, lane);
      const float2 rq = layer_norm_rows(o, p.eps);  // o := xq
      float dz[ND][4];
      float m0 = 0.f, m1 = 0.f, x0 = 0.f, x1 = 0.f;
#pragma unroll
      for (int jn = 0; jn < ND; ++jn) {
        const int cc = 8 * jn + 2 * t;
        // dO rows past T are zeros (the copy zero-fills them)
        const float2 d0 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(dob + r0 * D + cc));
        const float2 d1 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(dob + (r0 + 8) * D + cc));
        const float sb0 = col_sum(d0.x + d1.x), sb1 = col_sum(d0.y + d1.y);
        const float sg0 = col_sum(d0.x * o[jn][0] + d1.x * o[jn][2]);
        const float sg1 = col_sum(d0.y * o[jn][1] + d1.y * o[jn][3]);
        if (g == 0) {
          redb[wr * D + cc] = sb0;
          redb[wr * D + cc + 1] = sb1;
          redg[wr * D + cc] = sg0;
          redg[wr * D + cc + 1] = sg1;
        }
        dz[jn][0] = gamma[cc] * d0.x;
        dz[jn][1] = gamma[cc + 1] * d0.y;
        dz[jn][2] = gamma[cc] * d1.x;
        dz[jn][3] = gamma[cc + 1] * d1.y;
        m0 += dz[jn][0] + dz[jn][1];
        m1 += dz[jn][2] + dz[jn][3];
        x0 += dz[jn][0] * o[jn][0] + dz[jn][1] * o[jn][1];
        x1 += dz[jn][2] * o[jn][2] + dz[jn][3] * o[jn][3];
      }
      m0 = quad_sum(m0) * (1.f / D), m1 = quad_sum(m1) * (1.f / D);
      x0 = quad_sum(x0) * (1.f / D), x1 = quad_sum(x1) * (1.f / D);
      const float s0 = r0 < n ? rq.x : 0.f, s1 = r0 + 8 < n ? rq.y : 0.f;
#pragma unroll
      for (int jn = 0; jn < ND; ++jn) {
        dz[jn][0] = s0 * (dz[jn][0] - m0 - o[jn][0] * x0);
        dz[jn][1] = s0 * (dz[jn][1] - m0 - o[jn][1] * x0);
        dz[jn][2] = s1 * (dz[jn][2] - m1 - o[jn][2] * x1);
        dz[jn][3] = s1 * (dz[jn][3] - m1 - o[jn][3] * x1);
      }
      store_acc_bf16<D>(sU, dz, 16 * wr, 0, lane);
      store_acc_bf16<D>(obt + 2 * (F / 64) * TILE, dz, 16 * wr, 0, lane);
      store_col_sums(red2 + wr * D, dz, lane);
    }
    fence_proxy_async();
    __syncthreads();  // dZq2 (sU) for both warpgroups; warpgroup 0 is done reading the staging

    // ---- dZq1 = (dZq2 W2'^T) gelu'(Zq1) per chunk, and this warpgroup's partial of dZq1 W1'^T ----
    float dqp[ND][4];
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const int c = c0 + k;
      float dq1[NF][4];
      wg_product_ss<1, 0, 0>(dq1, desc_sw128(sU), desc_sw128(w2 + c * 64 * D));  // B: W2' rows, K-major
#pragma unroll
      for (int jn = 0; jn < NF; ++jn)
#pragma unroll
        for (int e = 0; e < 4; ++e) dq1[jn][e] *= gq[k][jn][e];
      uint32_t fd[4][4];
      to_frags(dq1, fd);
      store_frags_bf16(obt + (F / 64 + c) * TILE, fd, 16 * wr, lane);
      store_col_sums(red1 + wr * F + 64 * c, dq1, lane);
      wgmma_fence();
      if (k == 0) {
        wg_rs<1, 0, false>(dqp, fd, desc_sw128(w1 + c * D * 64));  // B: the W1' chunk [D][64], K-major
      } else {
        wg_rs<1, 0, true>(dqp, fd, desc_sw128(w1 + c * D * 64));
      }
      wgmma_commit();
      wgmma_wait<0>();
      fence_acc(dqp);
    }
    if (wc == 1) stage_rows(stage, dqp, wr, lane);
    __syncthreads();  // the dQ partial and every column sum are in shared memory

    // ---- dQ = dO + dZq1 W1'^T (warpgroup 0); the column sums (all threads), in a fixed order ----
    if (wc == 0) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = 16 * wr + g + 8 * half;
        if (row < n) {
          bf16* dq = p.dq + (bh * p.T + t0 + row) * D;
#pragma unroll
          for (int jn = 0; jn < ND; ++jn) {
            const int c = 8 * jn + 2 * t;
            const float2 u = *reinterpret_cast<const float2*>(stage + xidx(row, c));
            const float2 d = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(dob + row * D + c));
            *reinterpret_cast<uint32_t*>(dq + c) =
                pack_bf16(d.x + (dqp[jn][2 * half] + u.x), d.y + (dqp[jn][2 * half + 1] + u.y));
          }
        }
      }
    }
    if (tid < F) obf[tid] = (red1[tid] + red1[F + tid]) + (red1[2 * F + tid] + red1[3 * F + tid]);
    if (tid < D) {
      obf[F + tid] = (red2[tid] + red2[D + tid]) + (red2[2 * D + tid] + red2[3 * D + tid]);
      obf[F + D + tid] = (redg[tid] + redg[D + tid]) + (redg[2 * D + tid] + redg[3 * D + tid]);
      obf[F + 2 * D + tid] = (redb[tid] + redb[D + tid]) + (redb[2 * D + tid] + redb[3 * D + tid]);
    }
    __syncthreads();  // buffer b, the staging and the sums are free for the tile after next
    i = next;
    b ^= 1;
  }
  cp_async_wait<0>();
}

}  // namespace bwd_out
}  // namespace sm90
}  // namespace tttgraph

extern "C" int tttgraph_ttt_mlp_bwd_out_sm90(const tttgraph::BwdParams* params, int variant, cudaStream_t stream) {
  using namespace tttgraph::sm90::bwd_out;
  using tttgraph::sm90::M;
  using tttgraph::sm90::THREADS;
  void (*kernel)(const tttgraph::BwdParams) = nullptr;
  switch (variant) {
    case 0: kernel = ttt_mlp_bwd_out_kernel<false>; break;
    case 4: kernel = ttt_mlp_bwd_out_kernel<true>; break;
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM_LAUNCH);
  if (err != cudaSuccess) return static_cast<int>(err);
  int device = 0, sms = 0;
  err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return static_cast<int>(err);
  const int n_mb = (params->T + M - 1) / M;
  const long long steps = std::min(params->G, n_mb - params->chunk * params->G);
  const long long tiles = steps * params->batch_heads;
  if (steps < 1 || params->batch_heads < 1) return static_cast<int>(cudaErrorInvalidValue);
  const int grid = static_cast<int>(std::min<long long>(tiles, sms));  // one CTA per SM (shared memory)
  kernel<<<grid, THREADS, SMEM_LAUNCH, stream>>>(*params);
  return static_cast<int>(cudaGetLastError());
}
