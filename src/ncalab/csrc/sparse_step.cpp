// The memory passes of ncalab's sparse CPU step (ncalab/fast_step.py, SparseStep) around its matrix products, each
// as one parallel loop over rows or cells instead of several ATen ops (each of which walks the grid, allocates and,
// on several threads, wakes them). They compute bit for bit what the ATen ops they replace compute
// (tests/unit/test_fast_path.py compares the two); ncalab/cpu_kernels.py builds and loads them.
//
// Layout: the state is channels-last, so a grid of B x C x H x W is an n x C matrix of cells (n = B*H*W, rows in
// b, h, w order); `rows` are the m updated cells, `inv` maps each cell to its row (or to m, a zero row).
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <cstring>
#include <tuple>
#include <vector>

namespace {

constexpr int64_t kGrain = 1024;

void check_matrix(const at::Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.dim() == 2 && t.is_contiguous(), name, " must be a contiguous matrix, got sizes ", t.sizes(),
              " strides ", t.strides());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
}

void check_index(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 1 && t.is_contiguous() && t.scalar_type() == at::kLong, name,
              " must be a contiguous int64 vector");
}

void check_low(at::ScalarType dtype) {
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "dtype must be float32 or bfloat16, got ", dtype);
}

// out (total rows): row r < m holds the sources' rows rows[r] side by side (and a 1 after them with `bias`), the rows
// from m on are zero.
template <typename T>
void gather_rows_impl(const int64_t* rows, int64_t m, int64_t total, const std::vector<const float*>& src, int64_t c,
                      bool bias, T* out) {
  const int64_t q = static_cast<int64_t>(src.size());
  const int64_t k = c * q + (bias ? 1 : 0);
  at::parallel_for(0, total, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      T* o = out + r * k;
      if (r < m) {
        const int64_t cell = rows[r];
        for (int64_t p = 0; p < q; ++p) {
          const float* s = src[p] + cell * c;
          for (int64_t j = 0; j < c; ++j) o[p * c + j] = static_cast<T>(s[j]);
        }
        if (bias) o[k - 1] = static_cast<T>(1.0f);
      } else {
        for (int64_t j = 0; j < k; ++j) o[j] = static_cast<T>(0.0f);
      }
    }
  });
}

template <typename T>
void scatter_update_impl(const T* out, const int64_t* inv, int64_t m, const float* cells, const bool* pre,
                         int64_t batch, int64_t height, int64_t width, int64_t c, int64_t alpha, float threshold,
                         float* next, bool* above, bool* keep) {
  const int64_t n = batch * height * width;
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t row = inv[i];
      const float* s = cells + i * c;
      float* d = next + i * c;
      if (row < m) {
        const T* u = out + row * c;
        for (int64_t j = 0; j < c; ++j) d[j] = static_cast<float>(u[j]) + s[j];
      } else {
        for (int64_t j = 0; j < c; ++j) d[j] = 0.0f + s[j];
      }
      above[i] = d[alpha] > threshold;
    }
  });
  // keep = alive before and after: a live cell (alpha above the threshold) within the 3x3 neighbourhood, in grid.
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t x = i % width;
      const int64_t y = (i / width) % height;
      bool alive = false;
      for (int64_t dy = -1; dy <= 1 && !alive; ++dy) {
        const int64_t yy = y + dy;
        if (yy < 0 || yy >= height) continue;
        for (int64_t dx = -1; dx <= 1; ++dx) {
          const int64_t xx = x + dx;
          if (xx >= 0 && xx < width && above[i + dy * width + dx]) {
            alive = true;
            break;
          }
        }
      }
      const bool k = pre[i] && alive;
      keep[i] = k;
      const float f = k ? 1.0f : 0.0f;
      float* d = next + i * c;
      for (int64_t j = 0; j < c; ++j) d[j] = d[j] * f;
    }
  });
}

template <typename T>
void gather_grad_impl(const float* g_out, const bool* keep, const int64_t* rows, int64_t m, int64_t total, int64_t n,
                      int64_t c, float* gx, T* g) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float f = keep[i] ? 1.0f : 0.0f;
      for (int64_t j = 0; j < c; ++j) gx[i * c + j] = g_out[i * c + j] * f;
    }
  });
  gather_rows_impl<T>(rows, m, total, {gx}, c, /*bias=*/false, g);
}

template <typename T>
void scatter_grad_impl(const T* g_y, int64_t k, const int64_t* inv, int64_t n, int64_t c, int64_t n_ops, float* gx,
                       const std::vector<float*>& g_ops) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T* s = g_y + inv[i] * k;
      float* d = gx + i * c;
      for (int64_t j = 0; j < c; ++j) d[j] = d[j] + static_cast<float>(s[j]);
      for (int64_t o = 0; o < n_ops; ++o) {
        float* r = g_ops[o] + i * c;
        const T* so = s + (o + 1) * c;
        for (int64_t j = 0; j < c; ++j) r[j] = static_cast<float>(so[j]);
      }
    }
  });
}

}  // namespace

// total x (q*C + 1) in `dtype`: row r < m holds parts[0..q)[rows[r]] side by side and a 1 (the bias column), rows from m
// on are zero. parts: n x C float32 each.
at::Tensor gather_rows(const at::Tensor& rows, int64_t total, const std::vector<at::Tensor>& parts,
                       at::ScalarType dtype) {
  check_index(rows, "rows");
  check_low(dtype);
  TORCH_CHECK(!parts.empty(), "parts must not be empty");
  const int64_t m = rows.size(0);
  TORCH_CHECK(total >= m, "total (", total, ") must be at least the number of rows (", m, ")");
  const int64_t c = parts[0].size(1);
  std::vector<const float*> src;
  for (const auto& p : parts) {
    check_matrix(p, "each part", at::kFloat);
    TORCH_CHECK(p.size(1) == c && p.size(0) == parts[0].size(0), "parts must have the same shape");
    src.push_back(p.data_ptr<float>());
  }
  at::Tensor y = at::empty({total, c * static_cast<int64_t>(parts.size()) + 1}, parts[0].options().dtype(dtype));
  if (dtype == at::kFloat) {
    gather_rows_impl<float>(rows.data_ptr<int64_t>(), m, total, src, c, /*bias=*/true, y.data_ptr<float>());
  } else {
    gather_rows_impl<c10::BFloat16>(rows.data_ptr<int64_t>(), m, total, src, c, /*bias=*/true,
                                    y.data_ptr<c10::BFloat16>());
  }
  return y;
}

// The state after the update: next[i] = (cells[i] + out[inv[i]]) * keep[i] (out's rows from m on count as zero) and
// keep = pre & (alpha above threshold somewhere in the 3x3 neighbourhood of next, before the mask). out: total x C
// float32 or bfloat16; cells: n x C float32 (channels-last B x C x H x W); pre: n booleans.
std::tuple<at::Tensor, at::Tensor> scatter_update(const at::Tensor& out, const at::Tensor& inv, int64_t m,
                                                  const at::Tensor& cells, const at::Tensor& pre, int64_t batch,
                                                  int64_t height, int64_t width, int64_t alpha, double threshold) {
  check_index(inv, "inv");
  check_matrix(cells, "cells", at::kFloat);
  TORCH_CHECK(out.dim() == 2 && out.is_contiguous() && out.size(1) == cells.size(1) && out.size(0) > m,
              "out must be a contiguous matrix with more than m rows and the state's columns");
  const int64_t n = batch * height * width;
  const int64_t c = cells.size(1);
  TORCH_CHECK(cells.size(0) == n && inv.size(0) == n, "cells and inv must have one row per cell");
  TORCH_CHECK(pre.scalar_type() == at::kBool && pre.is_contiguous() && pre.numel() == n, "pre must be n booleans");
  TORCH_CHECK(alpha >= 0 && alpha < c, "alpha channel out of range");
  at::Tensor next = at::empty({n, c}, cells.options());
  at::Tensor above = at::empty({n}, pre.options());
  at::Tensor keep = at::empty({n}, pre.options());
  const float thr = static_cast<float>(threshold);
  if (out.scalar_type() == at::kFloat) {
    scatter_update_impl<float>(out.data_ptr<float>(), inv.data_ptr<int64_t>(), m, cells.data_ptr<float>(),
                               pre.data_ptr<bool>(), batch, height, width, c, alpha, thr, next.data_ptr<float>(),
                               above.data_ptr<bool>(), keep.data_ptr<bool>());
  } else {
    TORCH_CHECK(out.scalar_type() == at::kBFloat16, "out must be float32 or bfloat16");
    scatter_update_impl<c10::BFloat16>(out.data_ptr<c10::BFloat16>(), inv.data_ptr<int64_t>(), m,
                                       cells.data_ptr<float>(), pre.data_ptr<bool>(), batch, height, width, c, alpha,
                                       thr, next.data_ptr<float>(), above.data_ptr<bool>(), keep.data_ptr<bool>());
  }
  return {next, keep};
}

// Backward, first pass: gx = g_out * keep (n x C float32, channels-last) and g = gx at rows in `dtype` (total x C,
// zero rows from m on).
std::tuple<at::Tensor, at::Tensor> gather_grad(const at::Tensor& g_out, const at::Tensor& keep, const at::Tensor& rows,
                                               int64_t total, at::ScalarType dtype) {
  check_matrix(g_out, "g_out", at::kFloat);
  check_index(rows, "rows");
  check_low(dtype);
  const int64_t n = g_out.size(0), c = g_out.size(1), m = rows.size(0);
  TORCH_CHECK(keep.scalar_type() == at::kBool && keep.is_contiguous() && keep.numel() == n, "keep must be n booleans");
  TORCH_CHECK(total >= m, "total must be at least the number of rows");
  at::Tensor gx = at::empty({n, c}, g_out.options());
  at::Tensor g = at::empty({total, c}, g_out.options().dtype(dtype));
  if (dtype == at::kFloat) {
    gather_grad_impl<float>(g_out.data_ptr<float>(), keep.data_ptr<bool>(), rows.data_ptr<int64_t>(), m, total, n, c,
                            gx.data_ptr<float>(), g.data_ptr<float>());
  } else {
    gather_grad_impl<c10::BFloat16>(g_out.data_ptr<float>(), keep.data_ptr<bool>(), rows.data_ptr<int64_t>(), m, total,
                                    n, c, gx.data_ptr<float>(), g.data_ptr<c10::BFloat16>());
  }
  return {gx, g};
}

// Backward, the update network's input gradient g_y (rows x (1 + n_ops)*C, float32 or bfloat16) back on the grid:
// gx[i] += g_y[inv[i], state columns] in place, and for each operator its columns at inv[i] (n x C float32 each).
// Row inv[i] = m of g_y must be zero (it is: the rows from m on carry no gradient).
std::vector<at::Tensor> scatter_grad(const at::Tensor& g_y, const at::Tensor& inv, at::Tensor gx, int64_t n_ops) {
  check_index(inv, "inv");
  check_matrix(gx, "gx", at::kFloat);
  const int64_t n = gx.size(0), c = gx.size(1);
  TORCH_CHECK(inv.size(0) == n, "inv must have one entry per cell");
  TORCH_CHECK(g_y.dim() == 2 && g_y.is_contiguous() && g_y.size(1) == (n_ops + 1) * c,
              "g_y must be a contiguous matrix with (1 + n_ops) * C columns");
  std::vector<at::Tensor> g_ops;
  std::vector<float*> ptrs;
  for (int64_t o = 0; o < n_ops; ++o) {
    g_ops.push_back(at::empty({n, c}, gx.options()));
    ptrs.push_back(g_ops.back().data_ptr<float>());
  }
  const int64_t k = g_y.size(1);
  if (g_y.scalar_type() == at::kFloat) {
    scatter_grad_impl<float>(g_y.data_ptr<float>(), k, inv.data_ptr<int64_t>(), n, c, n_ops, gx.data_ptr<float>(),
                             ptrs);
  } else {
    TORCH_CHECK(g_y.scalar_type() == at::kBFloat16, "g_y must be float32 or bfloat16");
    scatter_grad_impl<c10::BFloat16>(g_y.data_ptr<c10::BFloat16>(), k, inv.data_ptr<int64_t>(), n, c, n_ops,
                                     gx.data_ptr<float>(), ptrs);
  }
  return g_ops;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("gather_rows", &gather_rows);
  module.def("scatter_update", &scatter_update);
  module.def("gather_grad", &gather_grad);
  module.def("scatter_grad", &scatter_grad);
}
