// Forward of tttgraph::ttt_mlp on Hopper (sm_90a): the on-chip tensor-parallel scan.
//
// One thread-block cluster of CS = 2 CTAs per (batch, head). CTA r owns the columns
// [r F/2, (r+1) F/2) of the inner MLP's hidden layer: W1[:, cols], b1[cols], W2[cols, :]. The fp32
// state never leaves the chip: W1 and W2 live in the registers of the warps that update them
// (as mma accumulators, so the update W -= X^T G is one accumulate), b1/b2 in shared memory, and
// a bf16 hi/lo copy of W1 and W2 in shared memory feeds the tensor cores (rewritten once per step).
// Per mini-batch of M = 64 tokens the only couplings across the hidden layer are two row-sums,
// Z2 = sum_f gelu(Z1)_f W2_f (inner step) and Zq2 (output); both cross the cluster in one exchange
// through distributed shared memory, with one cluster barrier per mini-batch.
//
// Shapes: q, k, v, out [B, H, T, D] bf16; eta [B, H, T] fp32; ln_w, ln_b [H, D]; w1 [H, D, F];
// b1 [H, F]; w2 [H, F, D]; b2 [H, D] (all fp32); checkpoints ck_w1 [B, H, C, D, F], ck_b1 [B, H, C, F],
// ck_w2 [B, H, C, F, D], ck_b2 [B, H, C, D] fp32: the state before every G-th mini-batch.
// Instantiated for D = 64, F = 256, M = 64 (CogVideoX-5B); README.md beside this file has the design.
#include <cuda_runtime.h>

#include "scan_common.cuh"
#include "ttt_mlp.h"

namespace tttgraph {
namespace sm90 {
namespace fwd {

// Shared memory, in bytes from the dynamic base. Tiles are bf16 [rows][cols], swizzled (swz).
constexpr int HALF = M / CS;                // output rows finished per CTA
constexpr int RECV_Z2 = M * D;              // floats: the peer's Z2 partial, all rows
constexpr int RECV = RECV_Z2 + HALF * D;    // floats per receive buffer: + the peer's Zq2 partial of my rows

constexpr int OFF_K = 0;                              // [2][M][D] double-buffered inputs
constexpr int OFF_Q = OFF_K + 2 * kTileMD;
constexpr int OFF_V = OFF_Q + 2 * kTileMD;
constexpr int OFF_ETA = OFF_V + 2 * kTileMD;          // [2][M] fp32
constexpr int OFF_W1H = OFF_ETA + 2 * M * 4;          // [D][FL] bf16 hi / lo of W1
constexpr int OFF_W1L = OFF_W1H + D * FL * 2;
constexpr int OFF_W2H = OFF_W1L + D * FL * 2;         // [FL][D] bf16 hi / lo of W2
constexpr int OFF_W2L = OFF_W2H + FL * D * 2;
constexpr int OFF_A = OFF_W2L + FL * D * 2;           // [M][FL] gelu(Z1), bf16
// [M][FL] G_z1, bf16. Also this CTA's Z2 partial ([M][D] fp32: the same 256-byte rows) from the
// fused pass until the back of the next step has read it: rows of both are touched by one twin pair
// only, and a named barrier of the pair separates the last read from the first G_z1 store.
constexpr int OFF_GZ1 = OFF_A + kTileMF;
constexpr int OFF_GZ2 = OFF_GZ1 + kTileMF;            // [M][D] G_z2, bf16
// [M][D] fp32: Zq2 twin staging / my rows' partial. The other half's 32 rows (8 KB) are free from the
// exchange until the next fused pass: they hold the bf16 lo part of G_z2 ([M][D]) meanwhile.
constexpr int OFF_ZQ = OFF_GZ2 + kTileMD;
constexpr int OFF_RECV = OFF_ZQ + M * D * 4;          // [2][RECV] fp32 written by the peer
constexpr int OFF_B1 = OFF_RECV + 2 * RECV * 4;       // [FL] fp32
constexpr int OFF_B2 = OFF_B1 + FL * 4;               // [D] fp32
constexpr int OFF_GAMMA = OFF_B2 + D * 4;
constexpr int OFF_BETA = OFF_GAMMA + D * 4;
constexpr int OFF_RED1 = OFF_BETA + D * 4;            // [4][FL] fp32 column sums of G_z1 per row block
constexpr int OFF_RED2 = OFF_RED1 + 4 * FL * 4;       // [8][D] fp32 column sums of G_z2 per 8-row block
constexpr int SMEM = OFF_RED2 + 8 * D * 4;
static_assert(SMEM <= 227 * 1024, "shared memory over the sm_90 per-block limit");
static_assert(kTileMF == M * D * 4, "the Z2 partial aliases the G_z1 tile row for row");

template <typename T>
__device__ __forceinline__ T* at(char* base, int off) {
  return reinterpret_cast<T*>(base + off);
}

// Prefetch the K, Q, V tiles and eta of the mini-batch starting at token t0 into buffer `buf`.
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
    cp_async16(q + o, p.q + g, valid);
    cp_async16(v + o, p.v + g, valid);
  }
  if (tid < M)
    cp_async4(at<float>(sm, OFF_ETA) + buf * M + tid, p.eta + bh * p.T + min(t0 + tid, p.T - 1), t0 + tid < p.T);
  cp_async_commit();
}

// Iteration j of the kernel: the back of step j (LayerNorm, G_z2, G_z1, update -> state S_{j+1}),
// then one fused pass against S_{j+1}: the output's Zq2 partial of mini-batch j and the front (Z1,
// A, Z2 partial) of step j + 1. Both partials cross the cluster in ONE exchange (v1, until
// 2026-11-26, had two cluster barriers per mini-batch: Z2, then Zq2). CTA r finishes only the output
// rows [32 r, 32 r + 32) (warps wr = 2r, 2r + 1), so only the other half of its Zq2 partial crosses.
// Receive buffers are double-buffered (exchange e lands in buffer e & 1); a push never overwrites an
// unread partial: a CTA pushes exchange e after passing barrier e - 1, which its peer reaches only
// after reading everything of exchange e - 2.
template <bool SPLIT, bool FAST_INNER, bool FAST_OUT>
__global__ void __cluster_dims__(CS, 1, 1) __launch_bounds__(THREADS, 1) ttt_mlp_fwd_kernel(const FwdParams p) {
  extern __shared__ __align__(128) char sm[];
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
  float* recv_peer = map_rank(recv, rank ^ 1);
  bf16* gz2lo = reinterpret_cast<bf16*>(zq_stage + (rank ^ 1) * HALF * D);

  float w1s[NF][4], w2s[ND][4];
  load_state(w1s, w2s, p.w1 + static_cast<size_t>(h) * D * F, p.w2 + static_cast<size_t>(h) * F * D, f_base, warp,
             lane);
  for (int i = tid; i < FL; i += THREADS) s.b1[i] = p.b1[static_cast<size_t>(h) * F + f_base + i];
  for (int i = tid; i < D; i += THREADS) {
    s.b2[i] = p.b2[h * D + i];
    gamma[i] = p.ln_w[h * D + i];
    beta[i] = p.ln_b[h * D + i];
  }
  store_state_copies<SPLIT>(s, w1s, w2s, warp, lane);

  const int n_mb = (p.T + M - 1) / M;
  load_tiles(p, sm, bh, 0, 0, tid);
  if (n_mb > 1) load_tiles(p, sm, bh, M, 1, tid);
  cp_async_wait<0>();
  __syncthreads();
  // Every CTA of the cluster is running before anyone touches a peer's shared memory.
  cluster_sync();

  // Exchange 0: the Z2 partial of step 0 (into receive buffer 0).
  float da[NF][4], z2[ND][4];
  s.k = at<bf16>(sm, OFF_K);
  step_front<SPLIT, FAST_INNER>(da, z2, s, wr, wc, lane);
  twin_reduce(z2, z2_mine, z2_mine, recv_peer, 0, wr, wc, lane);
  cluster_arrive();
  cluster_wait();

  for (int step = 0; step < n_mb; ++step) {
    const int buf = step & 1;
    const int t0 = step * M;
    const int n = min(M, p.T - t0);
    const bool next = step + 1 < n_mb;
    s.k = at<bf16>(sm, OFF_K) + buf * M * D;
    s.v = at<bf16>(sm, OFF_V) + buf * M * D;
    s.eta = at<float>(sm, OFF_ETA) + buf * M;
    const bf16* sq = at<bf16>(sm, OFF_Q) + buf * M * D;

    if (p.save && step % p.G == 0) {  // checkpoint: the state before this mini-batch
      const size_t c = bh * p.n_ck + step / p.G;
      store_state(p.ck_w1 + c * D * F, p.ck_w2 + c * F * D, w1s, w2s, f_base, warp, lane);
      for (int i = tid; i < FL; i += THREADS) p.ck_b1[c * F + f_base + i] = s.b1[i];
      if (rank == 0)
        for (int i = tid; i < D; i += THREADS) p.ck_b2[c * D + i] = s.b2[i];
    }

    // ---- back of step `step`: Z2 = my partial + the peer's (exchange `step`, buffer step & 1); the
    // twins split the rows; their named barrier separates the last z2_mine read from the G_z1 stores ----
    step_back_twin_rows<SPLIT>(w1s, w2s, z2_mine, recv + buf * RECV, da, s, gz2lo, n, tid, p.eps);
    cp_async_wait<0>();  // the next mini-batch's tiles (issued after the previous exchange)
    __syncthreads();     // new state copies, biases and those tiles are visible to every warp

    // ---- fused pass against the updated state: the output's Zq2 partial of this mini-batch and the
    // front of the next step; then exchange step + 1 (buffer (step + 1) & 1) ----
    float* rbuf = recv_peer + (buf ^ 1) * RECV;
    const int orow = 16 * wr + 8 * wc + g;  // the output row this lane finishes (if my_rows)
    uint32_t qres[ND];                      // its residual Q, bf16 pairs
    if (p.with_out) {
      float o[ND][4];
      {
        float zq[NF][4];
        rows_times_w1<false>(zq, sq, s.w1h, s.w1l, s.b1, wr, wc, lane);
#pragma unroll
        for (int j = 0; j < NF; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) zq[j][e] = gelu<FAST_OUT>(zq[j][e]);
#pragma unroll
        for (int j = 0; j < ND; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
        rows_times_w2<false>(o, zq, s.w2h, s.w2l, wc, lane);
      }
      // my rows: the CTA's partial stays in zq_stage; the other half goes to the peer's buffer.
      if (my_rows) {
        twin_reduce<true, false>(o, zq_stage, zq_stage, nullptr, 0, wr, wc, lane);
#pragma unroll
        for (int j = 0; j < ND; ++j) qres[j] = *reinterpret_cast<const uint32_t*>(sq + swz<D>(orow, 8 * j + 2 * t));
      } else {
        twin_reduce<false, true>(o, zq_stage, nullptr, rbuf + RECV_Z2, half_row0, wr, wc, lane);
      }
    }
    if (next) {
      s.k = at<bf16>(sm, OFF_K) + (buf ^ 1) * M * D;
      step_front<SPLIT, FAST_INNER>(da, z2, s, wr, wc, lane);
      twin_reduce(z2, z2_mine, z2_mine, rbuf, 0, wr, wc, lane);
    }
    if (!next && !p.with_out) break;  // nothing left to exchange
    cluster_arrive();  // release: my pushes are visible to the peer after its wait
    cluster_wait();    // acquire: the peer's pushes into my buffer (step + 1) & 1 have landed
    // Every warp of this CTA has passed its last read of this mini-batch's tiles: refill the buffer.
    if (step + 2 < n_mb) load_tiles(p, sm, bh, t0 + 2 * M, buf, tid);

    if (p.with_out && my_rows) {  // finish my output rows (one per lane): out = Q + gamma LN(Zq2 + b2) + beta
      float o[ND][2], rstd[1];
      read_sum2<1>(o, zq_stage, orow - g, recv + (buf ^ 1) * RECV + RECV_Z2, orow - g - half_row0, lane, s.b2);
      layer_norm_rows_n<1>(o, p.eps, rstd);
      if (orow < n) {
        bf16* out = p.out + (bh * p.T + t0 + orow) * D;
#pragma unroll
        for (int j = 0; j < ND; ++j) {
          const int c = 8 * j + 2 * t;
          const float2 q = unpack_bf16(qres[j]);
          *reinterpret_cast<uint32_t*>(out + c) =
              pack_bf16(q.x + gamma[c] * o[j][0] + beta[c], q.y + gamma[c + 1] * o[j][1] + beta[c + 1]);
        }
      }
    }
  }
  // No CTA may exit while its peer can still write into its shared memory.
  cluster_sync();
}

}  // namespace fwd
}  // namespace sm90
}  // namespace tttgraph

// Launch on `stream`; returns the cudaError_t of the launch. batch_heads = B * H clusters.
// variant: bit 0 split-bf16 state-update products, bit 1 tanh.approx in the output's GELU, bit 2
// tanh.approx in the inner step's GELU (see ttt_mlp.h).
extern "C" int tttgraph_ttt_mlp_fwd_sm90(const tttgraph::FwdParams* params, int batch_heads, int variant,
                                          cudaStream_t stream) {
  using namespace tttgraph::sm90::fwd;
  using tttgraph::sm90::THREADS;
  using tttgraph::sm90::CS;
  void (*kernel)(const tttgraph::FwdParams) = nullptr;
  switch (variant) {
    case 0: kernel = ttt_mlp_fwd_kernel<false, false, false>; break;
    case 1: kernel = ttt_mlp_fwd_kernel<true, false, false>; break;
    case 3: kernel = ttt_mlp_fwd_kernel<true, false, true>; break;
    case 7: kernel = ttt_mlp_fwd_kernel<true, true, true>; break;
    case 6: kernel = ttt_mlp_fwd_kernel<false, true, true>; break;
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM);
  if (err != cudaSuccess) return static_cast<int>(err);
  kernel<<<dim3(CS, batch_heads), THREADS, SMEM, stream>>>(*params);
  return static_cast<int>(cudaGetLastError());
}
