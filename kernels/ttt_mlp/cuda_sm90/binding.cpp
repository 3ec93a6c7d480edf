// PyTorch binding of the sm_90a TTT-MLP kernels: checks, then a launch on the current stream.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <algorithm>

#include "ttt_mlp.h"

namespace {

void check(const torch::Tensor& t, const char* name, torch::ScalarType dtype) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.scalar_type() == dtype, name, " has dtype ", t.scalar_type(), ", expected ", dtype);
}

// Output-worker clusters the decoupled forward would launch beside batch_heads scan clusters (0: the
// fused kernel runs).
int64_t forward_workers(int64_t batch_heads, int64_t variant) {
  const int w = tttgraph_ttt_mlp_fwd_sm90_workers(static_cast<int>(batch_heads), static_cast<int>(variant));
  TORCH_CHECK(w >= 0, "ttt_mlp cuda_sm90: occupancy query failed: ", cudaGetErrorString(static_cast<cudaError_t>(-w)));
  return w;
}

void forward(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor eta, torch::Tensor ln_w,
             torch::Tensor ln_b, torch::Tensor w1, torch::Tensor b1, torch::Tensor w2, torch::Tensor b2,
             torch::Tensor out, torch::Tensor ck_w1, torch::Tensor ck_b1, torch::Tensor ck_w2, torch::Tensor ck_b2,
             int64_t checkpoint_every, int64_t n_ck, bool save, bool with_out, double eps, int64_t variant,
             int64_t max_workers) {
  for (auto [t, name] : {std::pair{&q, "q"}, {&k, "k"}, {&v, "v"}, {&out, "out"}}) check(*t, name, torch::kBFloat16);
  for (auto [t, name] : {std::pair{&eta, "eta"}, {&ln_w, "ln_w"}, {&ln_b, "ln_b"}, {&w1, "w1"}, {&b1, "b1"},
                         {&w2, "w2"}, {&b2, "b2"}, {&ck_w1, "ck_w1"}, {&ck_b1, "ck_b1"}, {&ck_w2, "ck_w2"},
                         {&ck_b2, "ck_b2"}})
    check(*t, name, torch::kFloat32);
  TORCH_CHECK(q.dim() == 4 && q.size(3) == 64 && w1.size(2) == 256, "built for D = 64, F = 256");
  const int64_t batch_heads = q.size(0) * q.size(1);
  TORCH_CHECK(batch_heads <= 65535, "B * H = ", batch_heads, " exceeds the grid limit 65535");
  if (save) {
    TORCH_CHECK(ck_w1.numel() == batch_heads * n_ck * 64 * 256, "ck_w1 does not hold n_ck checkpoints");
  }
  const at::cuda::CUDAGuard guard(q.device());
  tttgraph::FwdParams p{};
  p.q = reinterpret_cast<const __nv_bfloat16*>(q.data_ptr());
  p.k = reinterpret_cast<const __nv_bfloat16*>(k.data_ptr());
  p.v = reinterpret_cast<const __nv_bfloat16*>(v.data_ptr());
  p.eta = eta.data_ptr<float>();
  p.ln_w = ln_w.data_ptr<float>();
  p.ln_b = ln_b.data_ptr<float>();
  p.w1 = w1.data_ptr<float>();
  p.b1 = b1.data_ptr<float>();
  p.w2 = w2.data_ptr<float>();
  p.b2 = b2.data_ptr<float>();
  p.out = reinterpret_cast<__nv_bfloat16*>(out.data_ptr());
  p.ck_w1 = ck_w1.data_ptr<float>();
  p.ck_b1 = ck_b1.data_ptr<float>();
  p.ck_w2 = ck_w2.data_ptr<float>();
  p.ck_b2 = ck_b2.data_ptr<float>();
  p.T = static_cast<int>(q.size(2));
  p.H = static_cast<int>(q.size(1));
  p.G = static_cast<int>(checkpoint_every);
  p.n_ck = static_cast<int>(n_ck);
  p.save = save ? 1 : 0;
  p.with_out = with_out ? 1 : 0;
  p.eps = static_cast<float>(eps);
  p.batch_heads = static_cast<int>(batch_heads);
  p.mb0 = 0;
  p.n_mb = static_cast<int>((q.size(2) + 63) / 64);
  p.from_ck = -1;
  // The decoupled output (ttt_mlp_fwd.cu): a ring of kRing states per (b, h) in global memory
  // (12.7 MB at B*H = 48) and zeroed flags; they live until the kernel is done (stream order).
  int workers = 0;
  torch::Tensor ring_w, ring_b, flags;
  // max_workers: 0 = the fused kernel; < 0 = as many worker clusters as fit; n > 0 = at most n (tests).
  if (with_out && max_workers != 0) {
    workers = static_cast<int>(forward_workers(batch_heads, variant));
    if (max_workers > 0) workers = std::min<int>(workers, static_cast<int>(max_workers));
  }
  if (workers > 0) {
    constexpr int kRing = 4;
    ring_w = torch::empty({batch_heads * kRing * 2 * 2 * 128 * 64}, q.options());
    ring_b = torch::empty({batch_heads * kRing * (256 + 64)}, w1.options());
    flags = torch::zeros({batch_heads * (2 + kRing) + 1}, w1.options().dtype(torch::kInt32));
    p.ring_w = reinterpret_cast<__nv_bfloat16*>(ring_w.data_ptr());
    p.ring_b = ring_b.data_ptr<float>();
    p.ready = reinterpret_cast<unsigned*>(flags.data_ptr<int32_t>());
    p.done = p.ready + batch_heads * 2;
    p.ticket = p.done + batch_heads * kRing;
    p.ring = kRing;
  }
  const int err = tttgraph_ttt_mlp_fwd_sm90(&p, static_cast<int>(batch_heads), static_cast<int>(variant), workers,
                                            at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == 0, "ttt_mlp cuda_sm90 forward launch failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
}

const __nv_bfloat16* bf(const torch::Tensor& t) { return reinterpret_cast<const __nv_bfloat16*>(t.data_ptr()); }
__nv_bfloat16* bf_mut(torch::Tensor& t) { return reinterpret_cast<__nv_bfloat16*>(t.data_ptr()); }

// Gradients into the given tensors (allocated by the caller, see cuda_sm90/__init__.py::backward;
// dw1 .. dbeta zeroed: the chunks accumulate into them). Per checkpoint chunk, last first: the
// forward's scan recomputes the chunk's states from its checkpoint into the scratch (st_w, st_b),
// the output's backward runs every tile of the chunk at once (dq, and the output's share of dS into
// obt / obf), then the backward kernel walks the chunk in reverse.
void backward(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor dout, torch::Tensor eta,
              torch::Tensor ln_w, torch::Tensor ln_b, torch::Tensor ck_w1, torch::Tensor ck_b1, torch::Tensor ck_w2,
              torch::Tensor ck_b2, torch::Tensor dq, torch::Tensor dk, torch::Tensor dv, torch::Tensor deta,
              torch::Tensor dgamma, torch::Tensor dbeta, torch::Tensor dw1, torch::Tensor db1, torch::Tensor dw2,
              torch::Tensor db2, torch::Tensor st_w, torch::Tensor st_b, torch::Tensor part, torch::Tensor obt,
              torch::Tensor obf, int64_t checkpoint_every, double eps, int64_t variant, int64_t forward_variant) {
  for (auto [t, name] : {std::pair{&q, "q"}, {&k, "k"}, {&v, "v"}, {&dout, "dout"}, {&dq, "dq"}, {&dk, "dk"},
                         {&dv, "dv"}, {&st_w, "st_w"}, {&obt, "obt"}})
    check(*t, name, torch::kBFloat16);
  for (auto [t, name] : {std::pair{&eta, "eta"}, {&ln_w, "ln_w"}, {&ln_b, "ln_b"}, {&ck_w1, "ck_w1"},
                         {&ck_b1, "ck_b1"}, {&ck_w2, "ck_w2"}, {&ck_b2, "ck_b2"}, {&deta, "deta"},
                         {&dgamma, "dgamma"}, {&dbeta, "dbeta"}, {&dw1, "dw1"}, {&db1, "db1"}, {&dw2, "dw2"},
                         {&db2, "db2"}, {&st_b, "st_b"}, {&part, "part"}, {&obf, "obf"}})
    check(*t, name, torch::kFloat32);
  TORCH_CHECK(q.dim() == 4 && q.size(3) == 64 && ck_w1.dim() == 5 && ck_w1.size(4) == 256, "built for D = 64, F = 256");
  const int64_t batch_heads = q.size(0) * q.size(1);
  const int64_t n_mb = (q.size(2) + 63) / 64;
  const int64_t n_ck = ck_w1.size(2);
  TORCH_CHECK(n_ck == (n_mb + checkpoint_every - 1) / checkpoint_every, "checkpoints do not match checkpoint_every");
  const int64_t slots = std::min(checkpoint_every, n_mb) + 1;
  TORCH_CHECK(st_w.numel() == batch_heads * slots * 2 * 2 * 128 * 64,
              "st_w must hold (min(G, n_mb) + 1) x 2 CTAs x (W1, W2) tiles per (b, h)");
  TORCH_CHECK(st_b.numel() == batch_heads * slots * 2 * (128 + 64), "st_b must be [B*H, slots, 2, 192]");
  TORCH_CHECK(obt.numel() == batch_heads * (slots - 1) * 9 * 64 * 64, "obt must be [B*H, min(G, n_mb), 9, 64, 64]");
  TORCH_CHECK(obf.numel() == batch_heads * (slots - 1) * (256 + 3 * 64), "obf must be [B*H, min(G, n_mb), 448]");
  TORCH_CHECK(part.numel() == batch_heads * 9 * 64 * 64, "part must be [B*H, 9, 64, 64]");
  const at::cuda::CUDAGuard guard(q.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  // The recomputation: the forward's scan over one chunk, no output, states into the scratch.
  tttgraph::FwdParams f{};
  f.q = bf(q);
  f.k = bf(k);
  f.v = bf(v);
  f.eta = eta.data_ptr<float>();
  f.ln_w = ln_w.data_ptr<float>();
  f.ln_b = ln_b.data_ptr<float>();
  f.ck_w1 = ck_w1.data_ptr<float>();
  f.ck_b1 = ck_b1.data_ptr<float>();
  f.ck_w2 = ck_w2.data_ptr<float>();
  f.ck_b2 = ck_b2.data_ptr<float>();
  f.T = static_cast<int>(q.size(2));
  f.H = static_cast<int>(q.size(1));
  f.G = static_cast<int>(checkpoint_every);
  f.n_ck = static_cast<int>(n_ck);
  f.save = 0;
  f.with_out = 0;
  f.eps = static_cast<float>(eps);
  f.batch_heads = static_cast<int>(batch_heads);
  f.st_w = bf_mut(st_w);
  f.st_b = st_b.data_ptr<float>();

  tttgraph::BwdParams p{};
  p.q = bf(q);
  p.k = bf(k);
  p.v = bf(v);
  p.dout = bf(dout);
  p.eta = eta.data_ptr<float>();
  p.ln_w = ln_w.data_ptr<float>();
  p.ln_b = ln_b.data_ptr<float>();
  p.ck_w1 = ck_w1.data_ptr<float>();
  p.ck_b1 = ck_b1.data_ptr<float>();
  p.ck_w2 = ck_w2.data_ptr<float>();
  p.ck_b2 = ck_b2.data_ptr<float>();
  p.dq = bf_mut(dq);
  p.dk = bf_mut(dk);
  p.dv = bf_mut(dv);
  p.deta = deta.data_ptr<float>();
  p.dgamma = dgamma.data_ptr<float>();
  p.dbeta = dbeta.data_ptr<float>();
  p.dw1 = dw1.data_ptr<float>();
  p.db1 = db1.data_ptr<float>();
  p.dw2 = dw2.data_ptr<float>();
  p.db2 = db2.data_ptr<float>();
  p.st_w = bf_mut(st_w);
  p.st_b = st_b.data_ptr<float>();
  p.part = part.data_ptr<float>();
  p.obt = bf_mut(obt);
  p.obf = obf.data_ptr<float>();
  p.batch_heads = static_cast<int>(batch_heads);
  p.T = static_cast<int>(q.size(2));
  p.H = static_cast<int>(q.size(1));
  p.G = static_cast<int>(checkpoint_every);
  p.n_ck = static_cast<int>(n_ck);
  p.slots = static_cast<int>(slots);
  p.eps = static_cast<float>(eps);
  for (int64_t c = n_ck - 1; c >= 0; --c) {
    f.from_ck = static_cast<int>(c);
    f.mb0 = static_cast<int>(c * checkpoint_every);
    f.n_mb = static_cast<int>(std::min(n_mb, (c + 1) * checkpoint_every) - c * checkpoint_every);
    int err = tttgraph_ttt_mlp_fwd_sm90(&f, static_cast<int>(batch_heads), static_cast<int>(forward_variant), 0,
                                        stream);
    TORCH_CHECK(err == 0, "ttt_mlp cuda_sm90 backward: the recomputation's launch failed: ",
                cudaGetErrorString(static_cast<cudaError_t>(err)));
    p.chunk = static_cast<int>(c);
    err = tttgraph_ttt_mlp_bwd_out_sm90(&p, static_cast<int>(variant), stream);
    TORCH_CHECK(err == 0, "ttt_mlp cuda_sm90 backward: the output's backward launch failed: ",
                cudaGetErrorString(static_cast<cudaError_t>(err)));
    err = tttgraph_ttt_mlp_bwd_sm90(&p, static_cast<int>(batch_heads), static_cast<int>(variant), stream);
    TORCH_CHECK(err == 0, "ttt_mlp cuda_sm90 backward launch failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
  }
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "TTT-MLP forward scan (sm_90a)");
  m.def("forward_workers", &forward_workers, "output-worker clusters of the decoupled forward (0: fused)");
  m.def("backward", &backward, "TTT-MLP backward (sm_90a)");
  // 3: backward() takes the output's-backward scratch obt / obf (ttt_mlp_bwd_out.cu) after part, and
  // part is [B*H, 9, 64, 64]; 2: the chunk scratch st_w / st_b and the forward's variant (the
  // recomputation runs on the forward's scan). __init__.py still drives 1 and 2 (builds of older
  // sources, for A/B timing).
  m.attr("BACKWARD_ABI") = 3;
}
