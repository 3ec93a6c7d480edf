// PyTorch binding of the sm_90a TTT-MLP kernels: checks, then a launch on the current stream.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include "ttt_mlp.h"

namespace {

void check(const torch::Tensor& t, const char* name, torch::ScalarType dtype) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.scalar_type() == dtype, name, " has dtype ", t.scalar_type(), ", expected ", dtype);
}

void forward(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor eta, torch::Tensor ln_w,
             torch::Tensor ln_b, torch::Tensor w1, torch::Tensor b1, torch::Tensor w2, torch::Tensor b2,
             torch::Tensor out, torch::Tensor ck_w1, torch::Tensor ck_b1, torch::Tensor ck_w2, torch::Tensor ck_b2,
             int64_t checkpoint_every, int64_t n_ck, bool save, bool with_out, double eps, int64_t variant) {
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
  const int err = tttgraph_ttt_mlp_fwd_sm90(&p, static_cast<int>(batch_heads), static_cast<int>(variant),
                                            at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == 0, "ttt_mlp cuda_sm90 forward launch failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "TTT-MLP forward scan (sm_90a)");
}
