// The fused AlphaGrad update on the CPU: per param group, one pass over the gradients for the norms
// (eq. 2), then one read-modify-write pass over the parameters with tanh evaluated by the rational
// approximation whose coefficients alphagrad/_fused.py passes in (|error| < 4.4e-7, strictly inside (-1, 1)).
// Built on first use by torch.utils.cpp_extension (see alphagrad/_fused.py).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

namespace {

constexpr int64_t kGrain = 1 << 15;

// tanh(x) ~ x * P(x^2) / Q(x^2) on |x| <= clamp; the coefficients come from alphagrad/_fused.py (the one place
// they are defined), lowest degree first: 4 for P, 5 for Q.
template <typename T>
struct RationalTanh {
  T p0, p1, p2, p3, q0, q1, q2, q3, q4, clamp;

  RationalTanh(const std::vector<double>& p, const std::vector<double>& q, double c)
      : p0(T(p[0])), p1(T(p[1])), p2(T(p[2])), p3(T(p[3])),
        q0(T(q[0])), q1(T(q[1])), q2(T(q[2])), q3(T(q[3])), q4(T(q[4])), clamp(T(c)) {}

  inline T operator()(T x) const {
    x = std::min(std::max(x, -clamp), clamp);
    const T z = x * x;
    const T num = ((p3 * z + p2) * z + p1) * z + p0;
    const T den = (((q4 * z + q3) * z + q2) * z + q1) * z + q0;
    return x * num / den;
  }
};

template <typename T>
double squared_norm(const T* g, int64_t n) {
  // float lanes over short blocks, blocks summed in double: vectorizes and keeps ~1e-7 relative accuracy
  return at::parallel_reduce(0, n, kGrain, 0.0, [&](int64_t begin, int64_t end, double total) {
    constexpr int64_t kBlock = 1024;
    for (int64_t start = begin; start < end; start += kBlock) {
      const int64_t stop = std::min(end, start + kBlock);
      T lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t j = start;
      for (; j + 8 <= stop; j += 8)
        for (int k = 0; k < 8; ++k) lanes[k] += g[j + k] * g[j + k];
      for (; j < stop; ++j) lanes[0] += g[j] * g[j];
      for (int k = 0; k < 8; ++k) total += double(lanes[k]);
    }
    return total;
  }, std::plus<double>());
}

template <typename T>
bool update(std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& grads,
            std::vector<torch::Tensor>& buffers, const std::vector<double>& alphas, double lr, double eps,
            double momentum, bool paper_momentum, double weight_decay, bool maximize, bool group_norm,
            const RationalTanh<T> rational_tanh) {
  const size_t count = params.size();
  std::vector<double> norms(count);
  double group_total = 0.0;
  for (size_t i = 0; i < count; ++i) {
    const double squared = squared_norm(grads[i].data_ptr<T>(), grads[i].numel());
    if (!std::isfinite(squared)) return false;  // nothing is written: the caller raises or skips
    norms[i] = std::sqrt(squared);
    group_total += squared;
  }
  // weight decay multiplies by 1 when off (exact); one branch-free loop per momentum form, so it vectorizes
  const T decay = T(1.0 - lr * weight_decay);
  const T step = T(lr);
  const T gamma = T(momentum);
  for (size_t i = 0; i < count; ++i) {
    const double norm = group_norm ? std::sqrt(group_total) : norms[i];
    const T scale = T((maximize ? -alphas[i] : alphas[i]) / (norm + eps));  // eq. 2-3, sign for maximize
    T* __restrict__ p = params[i].data_ptr<T>();
    const T* __restrict__ g = grads[i].data_ptr<T>();
    T* __restrict__ v = momentum != 0.0 ? buffers[i].data_ptr<T>() : nullptr;
    at::parallel_for(0, params[i].numel(), kGrain, [=](int64_t begin, int64_t end) {
      if (v == nullptr) {
        for (int64_t j = begin; j < end; ++j) p[j] = p[j] * decay - step * rational_tanh(g[j] * scale);  // eq. 4
      } else if (paper_momentum) {
        for (int64_t j = begin; j < end; ++j) {
          v[j] = gamma * v[j] + step * rational_tanh(g[j] * scale);  // eq. 5
          p[j] = p[j] * decay - v[j];  // eq. 6
        }
      } else {
        for (int64_t j = begin; j < end; ++j) {
          v[j] = gamma * v[j] + rational_tanh(g[j] * scale);
          p[j] = p[j] * decay - step * v[j];
        }
      }
    });
  }
  return true;
}

bool alphagrad_update(std::vector<torch::Tensor> params, std::vector<torch::Tensor> grads,
                      std::vector<torch::Tensor> buffers, std::vector<double> alphas, double lr, double eps,
                      double momentum, bool paper_momentum, double weight_decay, bool maximize, bool group_norm,
                      std::vector<double> numerator, std::vector<double> denominator, double clamp) {
  TORCH_CHECK(numerator.size() == 4 && denominator.size() == 5,
              "fused AlphaGrad: the rational tanh needs 4 numerator and 5 denominator coefficients");
  // every tensor the update touches, checked before anything is read or written (alphagrad() checks the same in
  // Python and raises ValueError first; these checks keep a direct call from reading or writing out of bounds)
  const size_t count = params.size();
  TORCH_CHECK(grads.size() == count && alphas.size() == count, "fused AlphaGrad: ", count, " parameters but ",
              grads.size(), " gradients and ", alphas.size(), " alphas");
  TORCH_CHECK(momentum == 0.0 || buffers.size() == count, "fused AlphaGrad: ", buffers.size(),
              " momentum buffers for ", count, " parameters");
  if (count == 0) return true;
  const auto dtype = params[0].scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "fused AlphaGrad: float32 or float64 only, got ", dtype);
  auto check = [&](const torch::Tensor& t, const char* kind, size_t i) {
    TORCH_CHECK(t.defined() && t.device().is_cpu() && t.layout() == at::kStrided && t.scalar_type() == dtype &&
                    t.is_contiguous() && t.numel() == params[i].numel(),
                "fused AlphaGrad: ", kind, " ", i, " must be a dense contiguous CPU tensor of dtype ", dtype, " with ",
                params[i].numel(), " elements");
  };
  for (size_t i = 0; i < count; ++i) {
    check(params[i], "parameter", i);
    check(grads[i], "gradient", i);
    if (momentum != 0.0) check(buffers[i], "momentum buffer", i);
  }
  if (dtype == at::kDouble) {
    return update<double>(params, grads, buffers, alphas, lr, eps, momentum, paper_momentum, weight_decay, maximize,
                          group_norm, RationalTanh<double>(numerator, denominator, clamp));
  }
  return update<float>(params, grads, buffers, alphas, lr, eps, momentum, paper_momentum, weight_decay, maximize,
                       group_norm, RationalTanh<float>(numerator, denominator, clamp));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("alphagrad_update", &alphagrad_update, "fused AlphaGrad update of one param group; false if a norm is not finite");
}
