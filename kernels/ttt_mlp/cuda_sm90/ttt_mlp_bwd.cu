// Backward of tttgraph::ttt_mlp on Hopper (sm_90a), in the forward's tensor-parallel layout.
//
// One cluster of 2 CTAs per (batch, head), each owning half of the hidden layer (scan_common.cuh).
// The gradient of the inner state, dS = (dW1, db1, dW2, db2), stays on chip like the forward's
// state: dW1/dW2 in registers (wgmma accumulators of the warps that own those tiles), db1/db2 in
// shared memory. Checkpoint chunks are walked last first, three launches per chunk (binding.cpp):
//   1. recompute: the forward's scan (ttt_mlp_fwd.cu) from the chunk's fp32 checkpoint, writing
//      every state of the chunk as bf16 W1/W2 tiles + fp32 b1/b2 into a per-(b, h) scratch;
//   2. the output's backward (ttt_mlp_bwd_out.cu): every (mini-batch, b, h) tile of the chunk at
//      once on all SMs, from the state after its step: dQ, and the output's share of dS' (the bf16
//      operands Aq, dZq1, dZq2 and the sums db1', db2', dgamma, dbeta);
//   3. reverse (this kernel; dS enters and leaves through the dw1 .. db2 outputs): for each
//      mini-batch of the chunk, last first, with S = S_j loaded from the scratch:
//      share    dW2' += Aq^T dZq2, dW1' += Q^T dZq1, db1' / db2' / dgamma / dbeta += the sums; then
//               bf16 copies of dW1', dW2' in shared memory;
//      phase 1  recompute Z1 = K W1 + b1, A, Z2; exchange E1 of the Z2 row sum (slot 0, kept until
//               phase 3);
//      phase 3  through the update W' = W - grad: G_z2, G_a, dG_z1 = -(K dW1' + db1'),
//               dK partial -G_z1 dW1'^T, dA, dG_a, partial dZ1, and the row sum
//               dG_z2 = -db2' - A dW2' + dG_a W2 (exchange E2, slot 1); then, one row per lane
//               group, the LayerNorm backward: dG_xh, dXh, drstd, dgamma, dbeta, deta, dV, dZ2;
//      phase 4  dZ1 = partial + (dZ2 W2^T) gelu'(Z1), dK partial dZ1 W1^T, dW2 += dG_a^T G_z2 +
//               A^T dZ2, dW1 += K^T dZ1, db1 += sum dZ1, db2 += sum dZ2; a cluster barrier, then
//               each CTA writes half of the rows of dK = dresid + (sum of 8 partials), in a fixed
//               order: deterministic, no atomics.
//      (No phase 2: the output's backward is launch 2, off this kernel's serial chain.)
// The derivation is kernels/ttt_mlp/README.md ("Backward of one step"); the products use bf16
// operands and fp32 accumulation.
#include <cuda_runtime.h>

#include "scan_common.cuh"
#include "ttt_mlp.h"
#include "wgmma.cuh"

namespace tttgraph {
namespace sm90 {
namespace bwd {

// Shared memory (bytes from the 1024-aligned base). SB0: the state S_j (W1 [D][FL], W2 [FL][D] bf16,
// b1 [FL], b2 [D] fp32); SB1: the bf16 copies of dW1', dW2' (its bias slots unused). T1, T2 [M][FL]
// and U1, U2 [M][D] are bf16 scratch tiles reused across phases. The products run on wgmma
// (wgmma.cuh), so the tiles start at multiples of 1024 bytes and the [rows][FL] tiles (W1, A, T1,
// T2) are stored as two [rows][64] halves, one per warpgroup.
constexpr int kW = D * FL * 2;
constexpr int OFF_SB_W1_0 = 0;
constexpr int OFF_SB_W2_0 = OFF_SB_W1_0 + kW;
constexpr int OFF_SB_W1_1 = OFF_SB_W2_0 + kW;
constexpr int OFF_SB_W2_1 = OFF_SB_W1_1 + kW;
constexpr int OFF_K = OFF_SB_W2_1 + kW;      // [M][D] bf16
constexpr int OFF_Q = OFF_K + kTileMD;       // [M][D] bf16 (dZ2 in phases 3-4)
constexpr int OFF_V = OFF_Q + kTileMD;       // [M][D] bf16
constexpr int OFF_A = OFF_V + kTileMD;       // [M][FL] gelu(Z1)
constexpr int OFF_T1 = OFF_A + kTileMF;      // Aq (the share), dG_a (phase 3-4)
constexpr int OFF_T2 = OFF_T1 + kTileMF;     // dZq1 (the share), dZ1 (phase 4)
constexpr int OFF_U1 = OFF_T2 + kTileMF;     // dZq2 (the share), G_z2 (phase 3-4)
// dZ2 (phases 3-4) takes Q's tile: Q is last read by the share's update product, waited before the
// cluster barrier E1, and refilled only after the step's closing cluster barrier (this keeps the 1 KB alignment slack
// within the 227 KB limit).
constexpr int OFF_U2 = OFF_Q;
constexpr int OFF_X = OFF_U1 + kTileMD;      // exchange, 2 slots
constexpr int OFF_SB_B1_0 = OFF_X + 2 * kXSlot;
constexpr int OFF_SB_B2_0 = OFF_SB_B1_0 + FL * 4;
constexpr int OFF_SB_B1_1 = OFF_SB_B2_0 + D * 4;
constexpr int OFF_SB_B2_1 = OFF_SB_B1_1 + FL * 4;
constexpr int OFF_ETA = OFF_SB_B2_1 + D * 4;  // [M]
constexpr int OFF_GAMMA = OFF_ETA + M * 4;
constexpr int OFF_BETA = OFF_GAMMA + D * 4;
constexpr int OFF_RED1 = OFF_BETA + D * 4;   // [4][FL]
constexpr int OFF_RED2 = OFF_RED1 + 4 * FL * 4;  // [8][D]
constexpr int OFF_DB1 = OFF_RED2 + 8 * D * 4;    // [FL] db1 of dS
constexpr int OFF_DB2 = OFF_DB1 + FL * 4;        // [D] db2 of dS (replicated)
constexpr int OFF_DGAM = OFF_DB2 + D * 4;        // [8][D] per-warp dgamma
constexpr int OFF_DBET = OFF_DGAM + 8 * D * 4;   // [8][D] per-warp dbeta
constexpr int SMEM = OFF_DBET + 8 * D * 4;
static_assert(OFF_SB_W1_1 % 1024 == 0 && OFF_SB_W2_1 % 1024 == 0 && OFF_K % 1024 == 0 && OFF_Q % 1024 == 0 &&
                  OFF_V % 1024 == 0 && OFF_A % 1024 == 0 && OFF_T1 % 1024 == 0 && OFF_T2 % 1024 == 0 &&
                  OFF_U1 % 1024 == 0,
              "wgmma operand tiles must be 1024-byte aligned");
constexpr int SMEM_LAUNCH = SMEM + 1024;  // room to align the base to 1024 bytes
static_assert(SMEM_LAUNCH <= 227 * 1024, "shared memory over the sm_90 per-block limit");

// Partial-sum buffers of the scratch `part` ([B*H][NPART][M][D] fp32), per (rank, wc).
constexpr int P_DKA = 0, P_DKB = 4, P_DRES = 8, NPART = 9;

struct StateBuf {
  bf16* w1;
  bf16* w2;
  float* b1;
  float* b2;
};

__device__ __forceinline__ StateBuf state_buf(char* sm, int i) {
  return i == 0 ? StateBuf{at<bf16>(sm, OFF_SB_W1_0), at<bf16>(sm, OFF_SB_W2_0), at<float>(sm, OFF_SB_B1_0),
                           at<float>(sm, OFF_SB_B2_0)}
                : StateBuf{at<bf16>(sm, OFF_SB_W1_1), at<bf16>(sm, OFF_SB_W2_1), at<float>(sm, OFF_SB_B1_1),
                           at<float>(sm, OFF_SB_B2_1)};
}

// A 16 x D accumulator tile (rows 16 wr..) into a row-major fp32 [M][D] global buffer.
__device__ __forceinline__ void store_rows_f32(float* dst, const float (&acc)[ND][4], int wr, int lane) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int j = 0; j < ND; ++j) {
    const int c = 8 * j + 2 * t;
    *reinterpret_cast<float2*>(dst + (16 * wr + g) * D + c) = make_float2(acc[j][0], acc[j][1]);
    *reinterpret_cast<float2*>(dst + (16 * wr + g + 8) * D + c) = make_float2(acc[j][2], acc[j][3]);
  }
}

// cp.async a bf16 [M][D] tile of rows t0.. of a [B, H, T, D] tensor (rows past T read as zeros).
__device__ __forceinline__ void load_rows(bf16* dst, const bf16* src, size_t bh, int T, int t0, int tid) {
  const size_t base = (bh * T + t0) * D;
  for (int i = tid; i < M * D / 8; i += THREADS) {
    const int row = i / (D / 8), col = (i % (D / 8)) * 8;
    const bool valid = t0 + row < T;
    cp_async16(dst + swz<D>(row, col), src + (valid ? base + row * D + col : 0), valid);
  }
}

__device__ __forceinline__ void load_eta(float* dst, const float* eta, size_t bh, int T, int t0, int tid) {
  if (tid < M) cp_async4(dst + tid, eta + bh * T + min(t0 + tid, T - 1), t0 + tid < T);
}

// cp.async state slot `slot` of the scratch (this CTA's half, written by the forward's scan in the
// state buffers' own layout: W1 as two [D][64] halves, W2 [FL][D], both swizzled) into a state buffer.
__device__ __forceinline__ void load_state_slot(const BwdParams& p, const StateBuf& sb, size_t bh, int slot, int rank,
                                                int tid) {
  const size_t base = (bh * p.slots + slot) * CS + rank;
  const bf16* w = p.st_w + base * 2 * FL * D;
  constexpr int CHUNKS = FL * D / 8;  // 16-byte chunks per tile
  for (int i = tid; i < CHUNKS; i += THREADS) {
    cp_async16(sb.w1 + 8 * i, w + 8 * i, true);
    cp_async16(sb.w2 + 8 * i, w + FL * D + 8 * i, true);
  }
  const float* b = p.st_b + base * (FL + D);
  if (tid < FL / 4) {
    cp_async16(sb.b1 + 4 * tid, b + 4 * tid, true);
  } else if (tid < FL / 4 + D / 4) {
    const int i = tid - FL / 4;
    cp_async16(sb.b2 + 4 * i, b + FL + 4 * i, true);
  }
}

// cp.async this CTA's part of mini-batch s's output operands (ttt_mlp_bwd_out.cu): Aq of its hidden
// chunks 2 rank, 2 rank + 1 into T1, dZq1 of them into T2 (both [M][FL] as two [M][64] halves, as
// stored), dZq2 into U1.
__device__ __forceinline__ void load_output_share(const BwdParams& p, char* sm, size_t bh, int s, int rank,
                                                  int tid) {
  const bf16* src = p.obt + (bh * (p.slots - 1) + s) * kObTiles * kObTile;
  bf16* t1 = at<bf16>(sm, OFF_T1);
  bf16* t2 = at<bf16>(sm, OFF_T2);
  bf16* u1 = at<bf16>(sm, OFF_U1);
  const bf16* aq = src + 2 * rank * kObTile;
  const bf16* dzq1 = src + (F / 64 + 2 * rank) * kObTile;
  for (int i = tid; i < 2 * kObTile / 8; i += THREADS) {
    cp_async16(t1 + 8 * i, aq + 8 * i, true);
    cp_async16(t2 + 8 * i, dzq1 + 8 * i, true);
  }
  const bf16* dzq2 = src + 2 * (F / 64) * kObTile;
  for (int i = tid; i < kObTile / 8; i += THREADS) cp_async16(u1 + 8 * i, dzq2 + 8 * i, true);
}

template <bool FAST>
__global__ void __cluster_dims__(CS, 1, 1) __launch_bounds__(THREADS, 1) ttt_mlp_bwd_kernel(const BwdParams p) {
  extern __shared__ __align__(128) char sm_raw[];
  char* sm = align_1024(sm_raw);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wr = warp & 3, wc = warp >> 2;
  const int g = lane >> 2, t = lane & 3;
  const int rank = static_cast<int>(cluster_rank());
  const size_t bh = blockIdx.y;
  const int h = static_cast<int>(bh % p.H);
  const int f_base = rank * FL;
  const int n_mb = (p.T + M - 1) / M;

  bf16* sK = at<bf16>(sm, OFF_K);
  bf16* sQ = at<bf16>(sm, OFF_Q);
  bf16* sV = at<bf16>(sm, OFF_V);
  bf16* sA = at<bf16>(sm, OFF_A);
  bf16* T1 = at<bf16>(sm, OFF_T1);
  bf16* T2 = at<bf16>(sm, OFF_T2);
  bf16* U1 = at<bf16>(sm, OFF_U1);
  bf16* U2 = at<bf16>(sm, OFF_U2);
  float* X = at<float>(sm, OFF_X);
  float* X0 = X;               // slot 0
  float* X1 = X + kXSlot / 4;  // slot 1
  float* seta = at<float>(sm, OFF_ETA);
  float* gamma = at<float>(sm, OFF_GAMMA);
  float* beta = at<float>(sm, OFF_BETA);
  float* red1 = at<float>(sm, OFF_RED1);
  float* red2 = at<float>(sm, OFF_RED2);
  float* sdb1 = at<float>(sm, OFF_DB1);
  float* sdb2 = at<float>(sm, OFF_DB2);
  float* dgam = at<float>(sm, OFF_DGAM);
  float* dbet = at<float>(sm, OFF_DBET);
  float* part = p.part + bh * NPART * M * D;

  // dS so far (the gradient of the state after this chunk; zero before the last chunk) from the
  // outputs, where the launch of the next chunk left it.
  for (int i = tid; i < D; i += THREADS) {
    gamma[i] = p.ln_w[h * D + i];
    beta[i] = p.ln_b[h * D + i];
    sdb2[i] = p.db2[bh * D + i];
  }
  for (int i = tid; i < FL; i += THREADS) sdb1[i] = p.db1[bh * F + f_base + i];
  for (int i = tid; i < 8 * D; i += THREADS) dgam[i] = dbet[i] = 0.f;
  float dw1s[NF][4], dw2s[ND][4];  // dS: gradient of the state after the current step
  load_state(dw1s, dw2s, p.dw1 + bh * D * F, p.dw2 + bh * F * D, f_base, warp, lane);
  cluster_sync();

  {
    const int c = p.chunk;
    const int j0 = c * p.G, j1 = min(j0 + p.G, n_mb);

    // ---- reverse over the chunk: state S_j in buffer 0, the bf16 copies of dS' in buffer 1 ----
    const StateBuf B = state_buf(sm, 0), A = state_buf(sm, 1);
    for (int j = j1 - 1; j >= j0; --j) {
      const int t0 = j * M, n = min(M, p.T - t0);
      load_state_slot(p, B, bh, j - j0, rank, tid);
      load_rows(sK, p.k, bh, p.T, t0, tid);
      load_rows(sQ, p.q, bh, p.T, t0, tid);
      load_rows(sV, p.v, bh, p.T, t0, tid);
      load_eta(seta, p.eta, bh, p.T, t0, tid);
      load_output_share(p, sm, bh, j - j0, rank, tid);  // Aq -> T1, dZq1 -> T2, dZq2 -> U1
      cp_async_commit();
      cp_async_wait<0>();
      fence_proxy_async();  // cp.async writes (generic proxy) -> wgmma operand reads (async proxy)
      __syncthreads();

      // ---- the output's share of dS' (ttt_mlp_bwd_out.cu computed its operands and sums):
      // dW2' += Aq^T dZq2, dW1' += Q^T dZq1 (A operands MN-major), db1' / db2' and dgamma / dbeta sums
      wgmma_fence();
      wg_ss<1, 1, 1, true>(dw2s, desc_sw128(half_of(T1, M, wc)), desc_sw128(U1));
      wg_ss<1, 1, 1, true>(dw1s, desc_sw128(sQ), desc_sw128(half_of(T2, M, wc)));
      wgmma_commit();
      {
        const float* obf = p.obf + (bh * (p.slots - 1) + (j - j0)) * kObFloats;
        if (tid < FL) sdb1[tid] += obf[f_base + tid];
        if (tid < D) {
          sdb2[tid] += obf[F + tid];
          dgam[tid] += obf[F + D + tid];
          dbet[tid] += obf[F + 2 * D + tid];
        }
      }
      wgmma_wait<0>();
      fence_acc(dw1s);
      fence_acc(dw2s);
      // bf16 copies of dW1', dW2' (W1 by halves), the operands of phase 3
      store_acc_bf16<D>(half_of(A.w1, D, wc), dw1s, 16 * wr, 0, lane);
      store_acc_bf16<D>(A.w2, dw2s, 16 * warp, 0, lane);

      // ---- phase 1: Z1 = K W1 + b1, A = gelu(Z1), Z2 partial = A W2; exchange E1 (slot 0) ----
      {
        float at_[NF][4];
        wg_product_ss<1, 0, 1>(at_, desc_sw128(sK), desc_sw128(half_of(B.w1, D, wc)));
        add_b1(at_, B.b1, wc, lane);
#pragma unroll
        for (int jn = 0; jn < NF; ++jn)
#pragma unroll
          for (int e = 0; e < 4; ++e) at_[jn][e] = gelu<FAST>(at_[jn][e]);
        store_acc_bf16<D>(half_of(sA, M, wc), at_, 16 * wr, 0, lane);
        float z2[ND][4];
        wg_product_rs<1, 1>(z2, at_, desc_sw128(B.w2 + wc * FH * D));  // A W2
        push_row_sum(z2, X0, rank, wr, wc, lane);
      }
      fence_proxy_async();  // A, the dS' copies (generic writes) -> phase 3's wgmma reads
      cluster_arrive();     // E1 (also this CTA's barrier for the shared-memory writes above)
      cluster_wait();
      const bf16* DW1 = A.w1;
      const bf16* DW2 = A.w2;

      // ---- phase 3: through the update W' = W - grad ----
      // Register budget: dS holds 64 registers for the whole kernel, and the accumulators of a wgmma
      // in flight cannot be spilled (ptxas serialises every wgmma if they do not fit, C7512). So the
      // products here are issued a few at a time, Z1 is recomputed (K W1 on the tensor cores) instead of
      // kept from phase 1, and the bf16 operands G_z1 / dG_a are kept as packed A fragments.
      float dz1[NF][4];  // dG_z1 g'', then the partial dZ1 (fp32, used in phase 4)
      {
        {  // G_z2, one token row per lane (the twins split the rows), into U1 for the products below
          const int row = 16 * wr + 8 * wc + g;
          float z[ND][2], gz[ND][2], rstd[1];
          read_sum2_n<1>(z, X0, row - g, X0 + M * D, row - g, lane, B.b2);
          layer_norm_rows_n<1>(z, p.eps, rstd);
          grad_z2_rows_n<1>(gz, z, rstd, sK, sV, seta, gamma, beta, n, row, lane);
#pragma unroll
          for (int j = 0; j < ND; ++j)
            *reinterpret_cast<uint32_t*>(U1 + swz<D>(row, 8 * j + 2 * t)) = pack_bf16(gz[j][0], gz[j][1]);
        }
        // Z1 = K W1 + b1 and K dW1' + db1' = -dG_z1 (both before the CTA barrier: they need no G_z2)
        float d1[NF][4];  // Z1, then gelu'(Z1)
        wgmma_fence();
        wg_ss<1, 0, 1, false>(d1, desc_sw128(sK), desc_sw128(half_of(B.w1, D, wc)));
        wg_ss<1, 0, 1, false>(dz1, desc_sw128(sK), desc_sw128(half_of(DW1, D, wc)));
        wgmma_commit();
        fence_proxy_async();
        __syncthreads();  // G_z2 (U1) is in shared memory
        wgmma_wait<0>();
        fence_acc(d1);
        fence_acc(dz1);
        add_b1(d1, B.b1, wc, lane);
        add_b1(dz1, sdb1, wc, lane);
        // Element-wise, with g', g'' of Z1: dG_a = dG_z1 g' (bf16 fragments), dz1 := dG_z1 g''.
        uint32_t fd[4][4], fg[4][4];  // dG_a, G_z1 as bf16 A fragments
        {
          float dga[NF][4];
#pragma unroll
          for (int jn = 0; jn < NF; ++jn)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              float g1, g2;
              gelu_d12<FAST>(d1[jn][e], g1, g2);
              const float dgz1 = -dz1[jn][e];
              d1[jn][e] = g1;
              dga[jn][e] = dgz1 * g1;
              dz1[jn][e] = dgz1 * g2;
            }
          to_frags(dga, fd);
        }
        {  // G_a = G_z2 W2^T: dz1 := dG_z1 G_a g''; G_z1 = G_a g'
          float ga[NF][4];
          wg_product_ss<1, 0, 0>(ga, desc_sw128(U1), desc_sw128(B.w2 + wc * FH * D));
#pragma unroll
          for (int jn = 0; jn < NF; ++jn)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              dz1[jn][e] *= ga[jn][e];
              ga[jn][e] *= d1[jn][e];
            }
          to_frags(ga, fg);
        }
        {  // G_z2 dW2'^T = -dA: the partial dZ1 = dG_z1 G_a g'' + dA g'
          float dan[NF][4];
          wg_product_ss<1, 0, 0>(dan, desc_sw128(U1), desc_sw128(DW2 + wc * FH * D));
#pragma unroll
          for (int jn = 0; jn < NF; ++jn)
#pragma unroll
            for (int e = 0; e < 4; ++e) dz1[jn][e] -= dan[jn][e] * d1[jn][e];
        }
        store_frags_bf16(half_of(T1, M, wc), fd, 16 * wr, lane);  // dG_a for dW2 += dG_a^T G_z2
        {  // dK partial (a) = -G_z1 dW1'^T
          float dk[ND][4];
          wg_product_rf<-1, 0>(dk, fg, desc_sw128(half_of(DW1, D, wc)));
          store_rows_f32(part + (P_DKA + rank * 2 + wc) * M * D, dk, wr, lane);
        }
        // dG_z2 partial = dG_a W2 - A dW2' (a row sum over the hidden layer)
        float dg2[ND][4];
        wgmma_fence();
        wg_rs<1, 1, false>(dg2, fd, desc_sw128(B.w2 + wc * FH * D));
        wg_ss<-1, 0, 1, true>(dg2, desc_sw128(half_of(sA, M, wc)), desc_sw128(DW2 + wc * FH * D));
        wgmma_commit();
        wgmma_wait<0>();
        fence_acc(dg2);
        // Slot 1 is free: the peer last read it in the previous step's LayerNorm backward, before
        // that step's closing cluster barrier.
        push_row_sum(dg2, X1, rank, wr, wc, lane);
        cluster_arrive();  // E2
        cluster_wait();
      }

      // LayerNorm backward, one token row per lane quad: warp w has rows 8w.., lane: row 8w + g,
      // columns 4t + 16q + e (q, e = 0..3).
      {
        const int row = 8 * warp + g;
        const bool live = row < n;
        const float e_r = live ? seta[row] : 0.f;
        float xh[16], rs[16], u[16];
        float sum = 0.f;
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const int cc = 4 * t + 16 * q;
          const float4 a = *reinterpret_cast<const float4*>(X0 + xidx(row, cc));
          const float4 b = *reinterpret_cast<const float4*>(X0 + M * D + xidx(row, cc));
          const float4 ua = *reinterpret_cast<const float4*>(X1 + xidx(row, cc));
          const float4 ub = *reinterpret_cast<const float4*>(X1 + M * D + xidx(row, cc));
          xh[4 * q + 0] = (a.x + b.x) + B.b2[cc + 0];
          xh[4 * q + 1] = (a.y + b.y) + B.b2[cc + 1];
          xh[4 * q + 2] = (a.z + b.z) + B.b2[cc + 2];
          xh[4 * q + 3] = (a.w + b.w) + B.b2[cc + 3];
          u[4 * q + 0] = (ua.x + ub.x) - sdb2[cc + 0];
          u[4 * q + 1] = (ua.y + ub.y) - sdb2[cc + 1];
          u[4 * q + 2] = (ua.z + ub.z) - sdb2[cc + 2];
          u[4 * q + 3] = (ua.w + ub.w) - sdb2[cc + 3];
          sum += (xh[4 * q] + xh[4 * q + 1]) + (xh[4 * q + 2] + xh[4 * q + 3]);
        }
        const float mu = quad_sum(sum) * (1.f / D);
        float var = 0.f;
#pragma unroll
        for (int i = 0; i < 16; ++i) {
          xh[i] -= mu;
          var += xh[i] * xh[i];
        }
        const float r = rsqrtf(quad_sum(var) * (1.f / D) + p.eps);
        float sg = 0.f, sgx = 0.f, su = 0.f, sux = 0.f;  // sums of G_xh, G_xh Xh, u, u Xh
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const int cc = 4 * t + 16 * q;
          const uint2 kr = *reinterpret_cast<const uint2*>(sK + swz<D>(row, cc));
          const uint2 vr = *reinterpret_cast<const uint2*>(sV + swz<D>(row, cc));
          const float2 k01 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&kr.x));
          const float2 k23 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&kr.y));
          const float2 v01 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&vr.x));
          const float2 v23 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&vr.y));
          const float kk4[4] = {k01.x, k01.y, k23.x, k23.y}, vv4[4] = {v01.x, v01.y, v23.x, v23.y};
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int i = 4 * q + e;
            xh[i] *= r;
            rs[i] = gamma[cc + e] * xh[i] + beta[cc + e] - (vv4[e] - kk4[e]);
            const float gx = gamma[cc + e] * e_r * rs[i];
            sg += gx;
            sgx += gx * xh[i];
            su += u[i];
            sux += u[i] * xh[i];
          }
        }
        sg = quad_sum(sg), sgx = quad_sum(sgx), su = quad_sum(su), sux = quad_sum(sux);
        const float mg = sg * (1.f / D), mgx = sgx * (1.f / D), mu_u = su * (1.f / D), mux = sux * (1.f / D);
        // drstd = u . P(G_xh); then dG_xh = r P(u) and the G_xh -> resid chain, per element.
        float drstd = 0.f, deta = 0.f, sdx = 0.f, sdxx = 0.f;
#pragma unroll
        for (int i = 0; i < 16; ++i) {
          const int cc = 4 * t + 16 * (i / 4) + (i % 4);
          const float gx = gamma[cc] * e_r * rs[i];
          drstd += u[i] * (gx - mg - xh[i] * mgx);
          const float dgx = r * (u[i] - mu_u - xh[i] * mux);             // dG_xh
          float dxh = -(r * (1.f / D)) * (sgx * u[i] + sux * gx);        // dXh through P's Xh
          const float gy = e_r * rs[i];                                    // G_y
          const float dgy = gamma[cc] * dgx;                               // dG_y
          deta += dgy * rs[i];
          const float dres = e_r * dgy;                                    // dresid
          dxh += gamma[cc] * dres;
          // per-column sums over the warp's rows: dgamma += dG_xh G_y + dresid Xh, dbeta += dresid
          u[i] = dxh;                                                      // u := dXh
          rs[i] = dres;                                                    // rs := dresid
          const float cg = col_sum(dgx * gy + dres * xh[i]), cb = col_sum(dres);
          if (g == 0) {
            dgam[warp * D + cc] += cg;
            dbet[warp * D + cc] += cb;
          }
          sdx += dxh;
          sdxx += dxh * xh[i];
        }
        drstd = quad_sum(drstd), deta = quad_sum(deta);
        sdx = quad_sum(sdx) * (1.f / D), sdxx = quad_sum(sdxx) * (1.f / D);
        // dZ2 = r P(dXh) - (r^2 / D) drstd Xh; rows past T are zero.
        const float cz = live ? 1.f : 0.f;
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const int cc = 4 * t + 16 * q;
          float dz2[4];
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int i = 4 * q + e;
            dz2[e] = cz * (r * (u[i] - sdx - xh[i] * sdxx) - (r * r * (1.f / D)) * drstd * xh[i]);
            const float cs = col_sum(dz2[e]);
            if (g == 0) red2[warp * D + cc + e] = cs;
          }
          uint2 pk;
          pk.x = pack_bf16(dz2[0], dz2[1]);
          pk.y = pack_bf16(dz2[2], dz2[3]);
          *reinterpret_cast<uint2*>(U2 + swz<D>(row, cc)) = pk;
          if (live) {
            const size_t gi = (bh * p.T + t0 + row) * D + cc;
            if (rank == 0) {
              uint2 dv;
              dv.x = pack_bf16(-rs[4 * q], -rs[4 * q + 1]);
              dv.y = pack_bf16(-rs[4 * q + 2], -rs[4 * q + 3]);
              *reinterpret_cast<uint2*>(p.dv + gi) = dv;
            } else {
              *reinterpret_cast<float4*>(part + P_DRES * M * D + row * D + cc) =
                  make_float4(rs[4 * q], rs[4 * q + 1], rs[4 * q + 2], rs[4 * q + 3]);
            }
          }
        }
        if (live && rank == 0 && t == 0) p.deta[bh * p.T + t0 + row] = deta;
      }
      fence_proxy_async();
      __syncthreads();  // dZ2 (U2), its column sums, G_z2 (U1), dG_a (T1) are in shared memory

      // ---- phase 4: dZ1, dK partial (b), and the state gradient of the step's input ----
      {
        // dZ2 W2^T (A = dZ2 K-major, B = W2 rows K-major) and Z1 = K W1 + b1 again (cheaper than
        // keeping it in registers through the LayerNorm backward)
        float tz[NF][4], z1[NF][4];
        wgmma_fence();
        wg_ss<1, 0, 0, false>(tz, desc_sw128(U2), desc_sw128(B.w2 + wc * FH * D));
        wg_ss<1, 0, 1, false>(z1, desc_sw128(sK), desc_sw128(half_of(B.w1, D, wc)));
        wgmma_commit();
        wgmma_wait<0>();
        fence_acc(tz);
        fence_acc(z1);
        add_b1(z1, B.b1, wc, lane);
#pragma unroll
        for (int jn = 0; jn < NF; ++jn)
#pragma unroll
          for (int e = 0; e < 4; ++e) dz1[jn][e] += tz[jn][e] * gelu_d1_only<FAST>(z1[jn][e]);
        store_acc_bf16<D>(half_of(T2, M, wc), dz1, 16 * wr, 0, lane);
        store_col_sums(red1 + wr * FL + wc * FH, dz1, lane);
        float dk[ND][4];  // dK partial (b) = dZ1 W1^T
        wg_product_rs<1, 0>(dk, dz1, desc_sw128(half_of(B.w1, D, wc)));
        store_rows_f32(part + (P_DKB + rank * 2 + wc) * M * D, dk, wr, lane);
      }
      fence_proxy_async();
      __syncthreads();  // dZ1 (T2) and its column sums
      // dW2 += dG_a^T G_z2 + A^T dZ2, dW1 += K^T dZ1 (A operands MN-major)
      wgmma_fence();
      wg_ss<1, 1, 1, true>(dw2s, desc_sw128(half_of(T1, M, wc)), desc_sw128(U1));
      wg_ss<1, 1, 1, true>(dw2s, desc_sw128(half_of(sA, M, wc)), desc_sw128(U2));
      wg_ss<1, 1, 1, true>(dw1s, desc_sw128(sK), desc_sw128(half_of(T2, M, wc)));
      wgmma_commit();
      wgmma_wait<0>();
      fence_acc(dw1s);
      fence_acc(dw2s);
      if (tid < FL) {
        sdb1[tid] += (red1[tid] + red1[FL + tid]) + (red1[2 * FL + tid] + red1[3 * FL + tid]);
      } else if (tid < FL + D) {
        const int i = tid - FL;
        float s8 = 0.f;
#pragma unroll
        for (int w = 0; w < 8; ++w) s8 += red2[w * D + i];
        sdb2[i] += s8;
      }

      // END: every partial of dK of this step is written (both CTAs); then each CTA finishes half of
      // the rows (CTA r: rows 32 r..), summing in a fixed order. (dQ is the output's backward's.)
      cluster_arrive();
      cluster_wait();
      for (int i = tid; i < M * D / 8; i += THREADS) {
        const int row = 32 * rank + i / (D / 4), cc = (i % (D / 4)) * 4;
        if (row >= n) continue;
        const int o = row * D + cc;
        float4 acc = *reinterpret_cast<const float4*>(part + P_DRES * M * D + o);
#pragma unroll
        for (int base = P_DKA; base <= P_DKB; base += 4) {
          const float4 a0 = *reinterpret_cast<const float4*>(part + (base + 0) * M * D + o);
          const float4 a1 = *reinterpret_cast<const float4*>(part + (base + 1) * M * D + o);
          const float4 a2 = *reinterpret_cast<const float4*>(part + (base + 2) * M * D + o);
          const float4 a3 = *reinterpret_cast<const float4*>(part + (base + 3) * M * D + o);
          acc.x += (a0.x + a1.x) + (a2.x + a3.x);
          acc.y += (a0.y + a1.y) + (a2.y + a3.y);
          acc.z += (a0.z + a1.z) + (a2.z + a3.z);
          acc.w += (a0.w + a1.w) + (a2.w + a3.w);
        }
        uint2 pk;
        pk.x = pack_bf16(acc.x, acc.y);
        pk.y = pack_bf16(acc.z, acc.w);
        *reinterpret_cast<uint2*>(p.dk + (bh * p.T + t0 + row) * D + cc) = pk;
      }
    }
  }

  // dS is now the gradient of the state before this chunk (after chunk 0: of the initial state, per
  // batch element); the LayerNorm parameters' gradients add this chunk's sums in a fixed order.
  store_state(p.dw1 + bh * D * F, p.dw2 + bh * F * D, dw1s, dw2s, f_base, warp, lane);
  __syncthreads();
  for (int i = tid; i < FL; i += THREADS) p.db1[bh * F + f_base + i] = sdb1[i];
  if (rank == 0) {
    for (int i = tid; i < D; i += THREADS) {
      p.db2[bh * D + i] = sdb2[i];
      float sgm = 0.f, sbt = 0.f;
      for (int w = 0; w < 8; ++w) {
        sgm += dgam[w * D + i];
        sbt += dbet[w * D + i];
      }
      p.dgamma[bh * D + i] += sgm;
      p.dbeta[bh * D + i] += sbt;
    }
  }
  cluster_sync();
}

}  // namespace bwd
}  // namespace sm90
}  // namespace tttgraph

extern "C" int tttgraph_ttt_mlp_bwd_sm90(const tttgraph::BwdParams* params, int batch_heads, int variant,
                                          cudaStream_t stream) {
  using namespace tttgraph::sm90::bwd;
  using tttgraph::sm90::CS;
  using tttgraph::sm90::THREADS;
  void (*kernel)(const tttgraph::BwdParams) = nullptr;
  switch (variant) {
    case 0: kernel = ttt_mlp_bwd_kernel<false>; break;
    case 4: kernel = ttt_mlp_bwd_kernel<true>; break;
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM_LAUNCH);
  if (err != cudaSuccess) return static_cast<int>(err);
  kernel<<<dim3(CS, batch_heads), THREADS, SMEM_LAUNCH, stream>>>(*params);
  return static_cast<int>(cudaGetLastError());
}
