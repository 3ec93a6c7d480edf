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
};

}  // namespace tttgraph

// Returns a cudaError_t (0 = the launch succeeded; cudaErrorInvalidValue for a variant that is not
// built). variant bits: 1 = bf16 hi/lo operands for the three products of the state update that feed
// the recurrence (Z1, Z2, G_a); 2 = tanh.approx in the output's GELU; 4 = tanh.approx in the inner
// step's GELU. Built: 0, 1, 3, 6, 7.
extern "C" int tttgraph_ttt_mlp_fwd_sm90(const tttgraph::FwdParams* params, int batch_heads, int variant,
                                          cudaStream_t stream);
