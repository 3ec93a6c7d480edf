// Forward of tttgraph::ttt_mlp on Hopper (sm_90a): the on-chip tensor-parallel scan.
//
// One thread-block cluster of CS = 2 CTAs per (batch, head). CTA r owns the columns
// [r F/2, (r+1) F/2) of the inner MLP's hidden layer: W1[:, cols], b1[cols], W2[cols, :]. The fp32
// state never leaves the chip: W1 and W2 live in the registers of the warps that update them
// (as mma accumulators, so the update W -= X^T G is one accumulate), b1/b2 in shared memory, and
// a bf16 hi/lo copy of W1 and W2 in shared memory feeds the tensor cores (rewritten once per step).
// Per mini-batch of M = 64 tokens the only couplings across the hidden layer are two row-sums,
// Z2 = sum_f gelu(Z1)_f W2_f (inner step) and Zq2 (output); each is all-reduced across the
// cluster through distributed shared memory, with one cluster barrier each.
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
constexpr int OFF_K = 0;                              // [2][M][D] double-buffered inputs
constexpr int OFF_Q = OFF_K + 2 * kTileMD;
constexpr int OFF_V = OFF_Q + 2 * kTileMD;
constexpr int OFF_ETA = OFF_V + 2 * kTileMD;          // [2][M] fp32
constexpr int OFF_W1H = OFF_ETA + 2 * M * 4;          // [D][FL] bf16 hi / lo of W1
constexpr int OFF_W1L = OFF_W1H + D * FL * 2;
constexpr int OFF_W2H = OFF_W1L + D * FL * 2;         // [FL][D] bf16 hi / lo of W2
constexpr int OFF_W2L = OFF_W2H + FL * D * 2;
constexpr int OFF_A = OFF_W2L + FL * D * 2;           // [M][FL] gelu(Z1), bf16
constexpr int OFF_GZ1 = OFF_A + kTileMF;              // [M][FL] G_z1, bf16
constexpr int OFF_GZ2 = OFF_GZ1 + kTileMF;            // [M][D] G_z2, bf16
constexpr int OFF_X = OFF_GZ2 + kTileMD;              // [2 slots][CS source ranks][M][D] fp32 partials
constexpr int OFF_B1 = OFF_X + 2 * kXSlot;            // [FL] fp32
constexpr int OFF_B2 = OFF_B1 + FL * 4;               // [D] fp32
constexpr int OFF_GAMMA = OFF_B2 + D * 4;
constexpr int OFF_BETA = OFF_GAMMA + D * 4;
constexpr int OFF_RED1 = OFF_BETA + D * 4;            // [4][FL] fp32 column sums of G_z1 per row block
constexpr int OFF_RED2 = OFF_RED1 + 4 * FL * 4;       // [4][D] fp32 column sums of G_z2
constexpr int SMEM = OFF_RED2 + 4 * D * 4;
static_assert(SMEM <= 227 * 1024, "shared memory over the sm_90 per-block limit");

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

template <bool SPLIT, bool FAST_INNER, bool FAST_OUT>
__global__ void __cluster_dims__(CS, 1, 1) __launch_bounds__(THREADS, 1) ttt_mlp_fwd_kernel(const FwdParams p) {
  extern __shared__ __align__(128) char sm[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wr = warp & 3, wc = warp >> 2;
  const int g = lane >> 2, t = lane & 3;
  const int rank = static_cast<int>(cluster_rank());
  const size_t bh = blockIdx.y;
  const int h = static_cast<int>(bh % p.H);
  const int f_base = rank * FL;  // first hidden column of this CTA

  StepBufs s;
  s.w1h = at<bf16>(sm, OFF_W1H);
  s.w1l = at<bf16>(sm, OFF_W1L);
  s.w2h = at<bf16>(sm, OFF_W2H);
  s.w2l = at<bf16>(sm, OFF_W2L);
  s.a = at<bf16>(sm, OFF_A);
  s.gz1 = at<bf16>(sm, OFF_GZ1);
  s.gz2 = at<bf16>(sm, OFF_GZ2);
  s.x = at<float>(sm, OFF_X);
  s.b1 = at<float>(sm, OFF_B1);
  s.b2 = at<float>(sm, OFF_B2);
  float* gamma = at<float>(sm, OFF_GAMMA);
  float* beta = at<float>(sm, OFF_BETA);
  s.gamma = gamma;
  s.beta = beta;
  s.red1 = at<float>(sm, OFF_RED1);
  s.red2 = at<float>(sm, OFF_RED2);

  // The fp32 state lives in registers for the whole scan (scan_common.cuh: w1s, w2s).
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
  // Every CTA of the cluster is running before anyone touches a peer's shared memory.
  cluster_sync();

  for (int step = 0; step < n_mb; ++step) {
    const int buf = step & 1;
    const int t0 = step * M;
    const int n = min(M, p.T - t0);
    cp_async_wait<0>();
    __syncthreads();
    if (step + 1 < n_mb) load_tiles(p, sm, bh, t0 + M, buf ^ 1, tid);
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

    // Without the output's exchange (slot 1) between two inner steps, alternate their slots so a
    // CTA never overwrites a partial its peer has yet to read.
    inner_step<SPLIT, FAST_INNER>(w1s, w2s, s, n, p.with_out ? 0 : (step & 1), rank, tid, p.eps);

    // ---- output: out = Q + gamma LN(gelu(Q W1' + b1') W2' + b2') + beta ----
    if (p.with_out) {
      float zq[NF][4];
      rows_times_w1<false>(zq, sq, s.w1h, s.w1l, s.b1, wr, wc, lane);
#pragma unroll
      for (int j = 0; j < NF; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) zq[j][e] = gelu<FAST_OUT>(zq[j][e]);
      float o[ND][4];
#pragma unroll
      for (int j = 0; j < ND; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
      rows_times_w2<false>(o, zq, s.w2h, s.w2l, wc, lane);
      cluster_row_sum(o, s.x + kXSlot / 4, rank, wr, wc, lane, s.b2);
      layer_norm_rows(o, p.eps);
      if (rank == 0 && wc == 0) {
        bf16* out = p.out + (bh * p.T + t0) * D;
        const int r0 = 16 * wr + g;
#pragma unroll
        for (int j = 0; j < ND; ++j) {
          const int c = 8 * j + 2 * t;
          const float ga = gamma[c], gb = gamma[c + 1], ba = beta[c], bb = beta[c + 1];
          if (r0 < n) {
            const float2 q0 = load_pair<D>(sq, r0, c);
            *reinterpret_cast<uint32_t*>(out + r0 * D + c) =
                pack_bf16(q0.x + ga * o[j][0] + ba, q0.y + gb * o[j][1] + bb);
          }
          if (r0 + 8 < n) {
            const float2 q1 = load_pair<D>(sq, r0 + 8, c);
            *reinterpret_cast<uint32_t*>(out + (r0 + 8) * D + c) =
                pack_bf16(q1.x + ga * o[j][2] + ba, q1.y + gb * o[j][3] + bb);
          }
        }
      }
    }
  }
  // No CTA may exit while its peer can still read its shared memory.
  cluster_sync();
}

}  // namespace fwd

// ---- v2: one cluster exchange per mini-batch ----------------------------------------------------
//
// Iteration j: the back of step j (LayerNorm, G_z2, G_z1, update -> state S_{j+1}), then one fused
// pass against S_{j+1}: the output's Zq2 partial of mini-batch j and the front (Z1, A, Z2 partial)
// of step j + 1. Both partials cross the cluster in ONE exchange (v1 had two cluster barriers per
// mini-batch). CTA r finishes only the output rows [32 r, 32 r + 32) (warps wr = 2r, 2r + 1), so only
// the other half of its Zq2 partial crosses. Receive buffers are double-buffered (exchange e lands in
// buffer e & 1); the proof that a push never overwrites an unread partial: a CTA pushes exchange e
// after passing barrier e - 1, which its peer reaches only after reading everything of exchange e - 2.
namespace v2 {

using fwd::at;

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
constexpr int OFF_ZQ = OFF_GZ2 + kTileMD;             // [M][D] fp32: Zq2 twin staging / my rows' partial
constexpr int OFF_RECV = OFF_ZQ + M * D * 4;          // [2][RECV] fp32 written by the peer
constexpr int OFF_B1 = OFF_RECV + 2 * RECV * 4;       // [FL] fp32
constexpr int OFF_B2 = OFF_B1 + FL * 4;               // [D] fp32
constexpr int OFF_GAMMA = OFF_B2 + D * 4;
constexpr int OFF_BETA = OFF_GAMMA + D * 4;
constexpr int OFF_RED1 = OFF_BETA + D * 4;            // [4][FL] fp32 column sums of G_z1 per row block
constexpr int OFF_RED2 = OFF_RED1 + 4 * FL * 4;       // [4][D] fp32 column sums of G_z2
constexpr int SMEM = OFF_RED2 + 4 * D * 4;
static_assert(SMEM <= 227 * 1024, "shared memory over the sm_90 per-block limit");
static_assert(kTileMF == M * D * 4, "the Z2 partial aliases the G_z1 tile row for row");

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
  fwd::load_tiles(p, sm, bh, 0, 0, tid);
  if (n_mb > 1) fwd::load_tiles(p, sm, bh, M, 1, tid);
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

    // ---- back of step `step`: Z2 = my partial + the peer's (exchange `step`, buffer step & 1) ----
    read_sum2(z2, z2_mine, 16 * wr, recv + buf * RECV, 16 * wr, lane, s.b2);
    named_barrier(1 + wr, 64);  // the twin is done reading z2_mine's rows before G_z1 overwrites them
    step_back<SPLIT>(w1s, w2s, z2, da, s, n, tid, p.eps);
    cp_async_wait<0>();  // the next mini-batch's tiles (issued after the previous exchange)
    __syncthreads();     // new state copies, biases and those tiles are visible to every warp

    // ---- fused pass against the updated state: the output's Zq2 partial of this mini-batch and the
    // front of the next step; then exchange step + 1 (buffer (step + 1) & 1) ----
    float* rbuf = recv_peer + (buf ^ 1) * RECV;
    uint32_t qres[ND / 2][2];  // this twin's residual columns (j = ND/2 wc ..) of my output rows
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
        for (int jj = 0; jj < ND / 2; ++jj) {
          const int c = 8 * (ND / 2 * wc + jj) + 2 * t;
          qres[jj][0] = *reinterpret_cast<const uint32_t*>(sq + swz<D>(16 * wr + g, c));
          qres[jj][1] = *reinterpret_cast<const uint32_t*>(sq + swz<D>(16 * wr + g + 8, c));
        }
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
    if (step + 2 < n_mb) fwd::load_tiles(p, sm, bh, t0 + 2 * M, buf, tid);

    if (p.with_out && my_rows) {  // finish my output rows: out = Q + gamma LN(Zq2 + b2) + beta
      float o[ND][4];
      read_sum2(o, zq_stage, 16 * wr, recv + (buf ^ 1) * RECV + RECV_Z2, 16 * wr - half_row0, lane, s.b2);
      layer_norm_rows(o, p.eps);
      bf16* out = p.out + (bh * p.T + t0) * D;
      const int r0 = 16 * wr + g;
#pragma unroll
      for (int j = 0; j < ND; ++j) {  // the twins store half the columns each (static indices into o)
        if (j / (ND / 2) != wc) continue;
        const int jj = j % (ND / 2);
        const int c = 8 * j + 2 * t;
        const float ga = gamma[c], gb = gamma[c + 1], ba = beta[c], bb = beta[c + 1];
        if (r0 < n) {
          const float2 q0 = unpack_bf16(qres[jj][0]);
          *reinterpret_cast<uint32_t*>(out + r0 * D + c) = pack_bf16(q0.x + ga * o[j][0] + ba, q0.y + gb * o[j][1] + bb);
        }
        if (r0 + 8 < n) {
          const float2 q1 = unpack_bf16(qres[jj][1]);
          *reinterpret_cast<uint32_t*>(out + (r0 + 8) * D + c) =
              pack_bf16(q1.x + ga * o[j][2] + ba, q1.y + gb * o[j][3] + bb);
        }
      }
    }
  }
  // No CTA may exit while its peer can still write into its shared memory.
  cluster_sync();
}

}  // namespace v2
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
    case 15: kernel = tttgraph::sm90::v2::ttt_mlp_fwd_kernel<true, true, true>; break;
    case 14: kernel = tttgraph::sm90::v2::ttt_mlp_fwd_kernel<false, true, true>; break;
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
  const int smem = (variant & 8) ? tttgraph::sm90::v2::SMEM : SMEM;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return static_cast<int>(err);
  kernel<<<dim3(CS, batch_heads), THREADS, smem, stream>>>(*params);
  return static_cast<int>(cudaGetLastError());
}
