// The forward and backward of GroupMixture (espnet_hdmole/layers/group_mixture.py) as two C++
// calls, for the bench's native-node control (benchmarks/native_group_control.py). It calls the
// same ATen operations, with the same arguments and in the same order, as the Python node does
// for the recipe's HDMoLE (activation 'threshold', combine 'product', output_scale 'expert',
// temperature 1, no dropout on the experts' input, no load-balancing loss), so its results are
// the same bit for bit; only the Python between the operations is gone.
//
// Per layer j of a group of G, ``params`` holds the router's weight (N, d) and bias (N), A
// (N, r, d), B (d_out_j, N, r) and the threshold's theta (a scalar): layer_parameters' order.
#include <torch/extension.h>

#include <algorithm>
#include <vector>

using at::Tensor;

namespace {
constexpr int64_t kPerLayer = 5;  // router weight, router bias, A, B, theta

Tensor packed_b(const std::vector<Tensor>& params, int64_t j, int64_t nr) {
  return params[kPerLayer * j + 3].reshape({-1, nr});  // (d_out, N*r): a view
}
}  // namespace

// ``ge``: the log domain posterior expanded to the experts, (1, N, B, 1), as
// routing.expert_posterior gives it (the Python node computes it once per forward, not per group).
// ``base_w``/``base_b``: the layers' frozen base weights and biases where the node computes their
// whole outputs (else empty). Returns the G deltas (T, d_out_j) (or outputs), then p, w, active, norm (G, N, T) / (G, 1, T), z and zw
// (G, N, r, T), the packed first weight, minus d tau / d theta and tau (G, 1, 1).
std::vector<Tensor> group_forward(const std::vector<Tensor>& params, const Tensor& x, const Tensor& ge,
                                  int64_t G, int64_t N, int64_t r, double scaling, double tau_max,
                                  const std::vector<Tensor>& base_w, const std::vector<std::optional<Tensor>>& base_b) {
  const int64_t d = x.size(1), T = x.size(0), gn = G * N, b = ge.size(2);
  // packing: [routers ; c A's] (G*N + G*N*r, d), its bias column, the thresholds
  std::vector<Tensor> rows, biases, thetas;
  for (int64_t j = 0; j < G; ++j) rows.push_back(params[kPerLayer * j]);
  for (int64_t j = 0; j < G; ++j) rows.push_back(params[kPerLayer * j + 2].reshape({N * r, d}));
  Tensor w_in = at::cat(rows);
  w_in.slice(0, gn).mul_(scaling);
  for (int64_t j = 0; j < G; ++j) biases.push_back(params[kPerLayer * j + 1]);
  biases.push_back(w_in.new_zeros({gn * r}));
  Tensor bias = at::cat(biases).unsqueeze(1);
  for (int64_t j = 0; j < G; ++j) thetas.push_back(params[kPerLayer * j + 4]);
  Tensor sig = at::sigmoid(at::stack(thetas).view({-1, 1, 1}));
  Tensor tau = sig * tau_max;
  Tensor minus_dtau = tau * (sig - 1.0);

  // one matmul for every router and A, experts first
  Tensor out = at::addmm(bias, w_in, x.t());
  Tensor logits = out.slice(0, 0, gn).view({G, N, T});
  Tensor z = out.slice(0, gn);
  // product combination: softmax(logits + log g), the utterance's posterior over its tokens
  Tensor p = at::softmax(logits.view({G, N, b, T / std::max<int64_t>(b, 1)}) + ge, 1).view({G, N, T});
  // dynamic threshold: (p - tau) on the active experts, renormalised
  Tensor active = p >= tau;
  Tensor u = (p - tau).clamp_min(0.0);
  Tensor norm = u.sum(1, true).clamp_min(1e-9);
  Tensor w = u / norm;
  z = z.view({G, N, r, T});
  Tensor zw = z * w.unsqueeze(2);
  Tensor zwt = zw.view({G, N * r, T}).transpose(1, 2);
  std::vector<Tensor> res;
  for (int64_t j = 0; j < G; ++j) {
    if (base_w.empty()) {
      res.push_back(zwt[j].mm(packed_b(params, j, N * r).t()));
      continue;
    }
    // the layer's whole output (group_mixture.base_outputs): its frozen base linear, the delta added by addmm_
    Tensor y = base_b[j].has_value() && base_b[j]->defined() ? at::addmm(*base_b[j], x, base_w[j].t())
                                                            : x.mm(base_w[j].t());
    res.push_back(y.addmm_(zwt[j], packed_b(params, j, N * r).t()));
  }
  for (const Tensor& t : {p, w, active, norm, z, zw, w_in, minus_dtau, tau}) res.push_back(t);
  return res;
}

// ``grads``: each delta's gradient (None where it got none); ``need_b``: whether each layer's B
// needs its gradient; ``base_w`` as in group_forward. Returns the input's gradient (None unless ``need_x``), then, where
// ``need_params``, per layer the gradients of the router's weight and bias, A, B (None where not
// needed) and theta.
std::vector<Tensor> group_backward(const std::vector<std::optional<Tensor>>& grads, const std::vector<Tensor>& params,
                                   const Tensor& x, int64_t b, const Tensor& p, const Tensor& w,
                                   const Tensor& active, const Tensor& norm, const Tensor& z, const Tensor& zw,
                                   const Tensor& w_in, const Tensor& minus_dtau,
                                   int64_t G, int64_t N, int64_t r, double scaling, bool need_x,
                                   const std::vector<bool>& need_b, bool need_params,
                                   const std::vector<Tensor>& base_w) {
  const int64_t d = x.size(1), T = x.size(0), gn = G * N;
  // the B matmuls (b_matmuls_backward)
  Tensor zw_flat = zw.view({G, N * r, T});
  Tensor dzw = zw_flat.new_empty(zw_flat.sizes());
  std::vector<Tensor> d_b;
  for (int64_t j = 0; j < G; ++j) {
    if (!grads[j].has_value() || !grads[j]->defined()) {
      dzw[j].zero_();
      d_b.push_back(Tensor());
      continue;
    }
    const Tensor& dd = *grads[j];
    Tensor dzw_j = dzw[j];
    at::mm_out(dzw_j, packed_b(params, j, N * r).t(), dd.t());
    d_b.push_back(need_b[j] ? zw_flat[j].mm(dd).t().view({dd.size(1), -1, r}) : Tensor());
  }
  dzw = dzw.view({G, N, r, T});
  Tensor dz = dzw * w.unsqueeze(2);
  Tensor dw = (dzw * z).sum(2);
  // the threshold, the product's softmax
  Tensor dp = (dw - (dw * w).sum(1, true)) / norm * active;
  Tensor d_theta = dp.sum({1, 2}, true) * minus_dtau;
  const std::vector<int64_t> shape{G, N, b, T / std::max<int64_t>(b, 1)};
  Tensor dlogits = at::_softmax_backward_data(dp.view(shape), p.view(shape), 1, p.scalar_type()).view({G, N, T});
  // the first matmul
  Tensor dout = at::cat({dlogits.view({gn, T}), dz.view({gn * r, T})});
  std::vector<Tensor> res;
  Tensor d_in;
  if (need_params) d_in = dout.mm(x);
  Tensor dx = need_x ? dout.t().mm(w_in) : Tensor();
  if (need_x) {  // group_mixture.add_base_input_grads: through the frozen base linears
    for (size_t j = 0; j < base_w.size(); ++j)
      if (grads[j].has_value() && grads[j]->defined()) dx.addmm_(*grads[j], base_w[j]);
  }
  res.push_back(dx);
  if (!need_params) return res;
  d_in.slice(0, gn).mul_(scaling);
  Tensor d_bias = dlogits.sum(2);
  for (int64_t j = 0; j < G; ++j) {
    res.push_back(d_in.slice(0, j * N, (j + 1) * N));
    res.push_back(d_bias[j]);
    res.push_back(d_in.slice(0, gn + j * N * r, gn + (j + 1) * N * r).view({N, r, d}));
    res.push_back(d_b[j]);
    res.push_back(d_theta[j].view(at::IntArrayRef{}));  // (view({}) would pick the dtype overload)
  }
  return res;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("group_forward", &group_forward, "GroupMixture's forward (threshold, product)");
  m.def("group_backward", &group_backward, "GroupMixture's backward (threshold, product)");
}
