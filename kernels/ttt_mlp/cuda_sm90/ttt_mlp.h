// Host-visible interface of the sm_90a TTT-MLP kernels (no torch, no device code): the parameter
// blocks and the C launchers that binding.cpp calls. Shapes are in ttt_mlp_fwd.cu.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace tttgraph {

struct FwdParams {
  const __nv_bfloat16* q;  // [B, H, T, D]
  const __nv_bfloat16* k;
  const __nv_bfloat16* v;
  const float* eta;        // [B, H, T]
  const float* ln_w;       // [H, D]
  const float* ln_b;
  const float* w1;         // [H, D, F] initial inner state, shared over the batch
  const float* b1;         // [H, F]
  const float* w2;         // [H, F, D]
  const float* b2;         // [H, D]
  __nv_bfloat16* out;      // [B, H, T, D]
  float* ck_w1;            // [B, H, C, D, F] state before every G-th mini-batch
  float* ck_b1;            // [B, H, C, F]
  float* ck_w2;            // [B, H, C, F, D]
  float* ck_b2;            // [B, H, C, D]
  int T;
  int H;
  int G;         // mini-batches between checkpoints
  int n_ck;      // C, checkpoints per (b, h)
  int save;      // write the checkpoints
  int with_out;  // write out (0: checkpoints only, for a backward that got none)
  float eps;     // LayerNorm epsilon inside the square root
  // Decoupled output (ttt_mlp_fwd.cu): with ring_w set, clusters blockIdx.y < batch_heads run the
  // scan and publish every state's bf16 operand copies into a ring; the clusters after them are
  // output workers that compute out from it. Null ring_w: the fused kernel (the scan computes out).
  __nv_bfloat16* ring_w;  // [B*H][ring][CS][2][FL * D] each CTA's W1 hi tile then its W2 hi tile, as in shared memory
  float* ring_b;          // [B*H][ring][F + D] b1, then b2
  unsigned* ready;        // [B*H][CS] zeroed: states published by CTA r (tile j's state is there once > j)
  unsigned* done;         // [B*H][ring] zeroed: j + 1 of the last tile whose state was read from slot j % ring
  unsigned* ticket;       // [1] zeroed: next output tile (j * B*H + bh) to take
  int ring;               // slots per (b, h)
  int batch_heads;
  // The mini-batches this launch scans: mb0 .. mb0 + n_mb - 1 (the whole sequence: 0 and all). The
  // backward's recomputation scans one checkpoint chunk per launch, from checkpoint from_ck (>= 0:
  // the initial state is ck_*[b, h, from_ck], read-only; -1: w1 / b1 / w2 / b2), and with st_w set
  // writes the state before each of its mini-batches and after the last (slots 0 .. n_mb of
  // slots = min(G, all mini-batches) + 1 per (b, h)) in the backward's scratch layout: st_w
  // [B*H][slots][CS][2][FL * D] bf16 (each CTA's W1 then W2 hi tile, as in shared memory), st_b
  // [B*H][slots][CS][FL + D] (its b1 slice, then b2).
  int mb0;
  int n_mb;
  int from_ck;
  __nv_bfloat16* st_w;
  float* st_b;
};

struct BwdParams {
  const __nv_bfloat16* q;     // [B, H, T, D]
  const __nv_bfloat16* k;
  const __nv_bfloat16* v;
  const __nv_bfloat16* dout;  // [B, H, T, D] gradient of out
  const float* eta;           // [B, H, T]
  const float* ln_w;          // [H, D]
  const float* ln_b;
  const float* ck_w1;         // [B, H, C, D, F] checkpoints of the forward (the state before every G-th mini-batch)
  const float* ck_b1;         // [B, H, C, F]
  const float* ck_w2;         // [B, H, C, F, D]
  const float* ck_b2;         // [B, H, C, D]
  __nv_bfloat16* dq;          // [B, H, T, D]
  __nv_bfloat16* dk;
  __nv_bfloat16* dv;
  float* deta;                // [B, H, T]
  float* dgamma;              // [B, H, D] per batch element (the caller sums over B)
  float* dbeta;
  float* dw1;                 // [B, H, D, F] gradient of the initial state, per batch element
  float* db1;                 // [B, H, F]
  float* dw2;                 // [B, H, F, D]
  float* db2;                 // [B, H, D]
  // The states of the chunk, written by the forward's scan (FwdParams::st_w / st_b, same layout):
  __nv_bfloat16* st_w;        // scratch [B*H][slots][CS][2][FL * D]
  float* st_b;                // scratch [B*H][slots][CS][FL + D]
  float* part;                // scratch [B*H][9][64][64]: partial sums of dk
  // The output's backward of the chunk (ttt_mlp_bwd_out.cu), per (b, h) and step of the chunk
  // (slots - 1 of them): bf16 operands of the output's share of dS (Aq, dZq1, dZq2) and its sums.
  __nv_bfloat16* obt;         // scratch [B*H][slots - 1][9][64][64] bf16
  float* obf;                 // scratch [B*H][slots - 1][F + 3 D]: db1, db2, dgamma, dbeta shares
  int batch_heads;
  int T;
  int H;
  int G;      // mini-batches between checkpoints
  int n_ck;   // C
  int slots;  // G + 1 state slots in the scratch (G capped at the number of mini-batches)
  int chunk;  // the checkpoint chunk this launch walks (dw1 .. dbeta hold dS and the sums so far)
  float eps;
};

}  // namespace tttgraph

// Returns a cudaError_t (0 = the launch succeeded; cudaErrorInvalidValue for a variant that is not
// built). variant bits: 1 = bf16 hi/lo operands for the three products of the state update that feed
// the recurrence (Z1, Z2, G_a); 2 = tanh.approx in the output's GELU; 4 = tanh.approx in the inner
// step's GELU. Built: 0, 1, 3, 6, 7.
// With params->ring_w set it launches batch_heads + workers clusters (the decoupled output);
// workers must come from tttgraph_ttt_mlp_fwd_sm90_workers.
extern "C" int tttgraph_ttt_mlp_fwd_sm90(const tttgraph::FwdParams* params, int batch_heads, int variant,
                                          int workers, cudaStream_t stream);

// Output-worker clusters the decoupled forward can run beside batch_heads scan clusters on this
// device, every cluster resident at once (0: use the fused kernel). Negative: a cudaError_t.
extern "C" int tttgraph_ttt_mlp_fwd_sm90_workers(int batch_heads, int variant);

// The backward of one checkpoint chunk (params->chunk), from the states the forward's scan wrote
// for it; chunks are launched last first, dw1 .. dbeta accumulating (zeroed before the last chunk).
// Returns a cudaError_t. variant bit 2: tanh.approx in the GELU derivatives (built: 0 and 4).
extern "C" int tttgraph_ttt_mlp_bwd_sm90(const tttgraph::BwdParams* params, int batch_heads, int variant,
                                          cudaStream_t stream);

// The output's backward of one checkpoint chunk (params->chunk), every (mini-batch, b, h) tile at
// once: writes dq and the output's share of dS (obt / obf) for the reverse launch of that chunk,
// from the states the forward's scan wrote. Returns a cudaError_t; variant as the backward's.
extern "C" int tttgraph_ttt_mlp_bwd_out_sm90(const tttgraph::BwdParams* params, int variant, cudaStream_t stream);
