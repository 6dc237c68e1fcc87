// Multi-scale deformable attention: kernel entry points and the input checks they share.
//
// Layout (letters as in the Python docstrings):
//   value               (B, S, H, D)      S = sum over levels of h_l * w_l
//   spatial_shapes      (L, 2) int64      (h_l, w_l) of each level
//   level_start_index   (L,)   int64      first flattened pixel of each level in S
//   sampling_locations  (B, Q, H, L, P, 2) normalised (x, y); (0, 0) is the top-left corner
//   attention_weights   (B, Q, H, L, P)
//   output              (B, Q, H * D)
// Sampling is bilinear with zero padding outside the map, exactly like
// grid_sample(align_corners=False, padding_mode="zeros"): pixel x = loc_x * w_l - 0.5.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>
#include <tuple>

namespace dimaskdino {

// Sizes of one call, read from the tensors by `ms_deform_attn_sizes`.
struct MSDeformAttnSizes {
  int64_t batch;     // B
  int64_t pixels;    // S
  int64_t heads;     // H
  int64_t channels;  // D
  int64_t queries;   // Q
  int64_t levels;    // L
  int64_t points;    // P
};

// Checks ranks, sizes and devices of the inputs (not the dtypes: each backend checks those) and
// returns the sizes. Contents of spatial_shapes are checked by the CPU kernel and by the Python
// wrapper; the CUDA kernel cannot read them without a host sync.
inline MSDeformAttnSizes ms_deform_attn_sizes(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  TORCH_CHECK(value.dim() == 4, "ms_deform_attn: value must be (B, S, H, D), got shape ", value.sizes());
  TORCH_CHECK(sampling_locations.dim() == 6 && sampling_locations.size(5) == 2,
              "ms_deform_attn: sampling_locations must be (B, Q, H, L, P, 2), got shape ",
              sampling_locations.sizes());
  MSDeformAttnSizes n{value.size(0), value.size(1), value.size(2), value.size(3),
                      sampling_locations.size(1), sampling_locations.size(3), sampling_locations.size(4)};
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(0) == n.levels && spatial_shapes.size(1) == 2,
              "ms_deform_attn: spatial_shapes must be (L, 2) with L = ", n.levels,
              " (from sampling_locations), got shape ", spatial_shapes.sizes());
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == n.levels,
              "ms_deform_attn: level_start_index must be (L,) with L = ", n.levels, ", got shape ",
              level_start_index.sizes());
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong && level_start_index.scalar_type() == at::kLong,
              "ms_deform_attn: spatial_shapes and level_start_index must be int64, got ",
              spatial_shapes.scalar_type(), " and ", level_start_index.scalar_type());
  TORCH_CHECK(sampling_locations.size(0) == n.batch && sampling_locations.size(2) == n.heads,
              "ms_deform_attn: sampling_locations must be (B, Q, H, L, P, 2) with B = ", n.batch,
              " and H = ", n.heads, " (from value), got shape ", sampling_locations.sizes());
  TORCH_CHECK(attention_weights.dim() == 5 && attention_weights.size(0) == n.batch &&
                  attention_weights.size(1) == n.queries && attention_weights.size(2) == n.heads &&
                  attention_weights.size(3) == n.levels && attention_weights.size(4) == n.points,
              "ms_deform_attn: attention_weights must be (B, Q, H, L, P) = (", n.batch, ", ", n.queries, ", ",
              n.heads, ", ", n.levels, ", ", n.points, "), got shape ", attention_weights.sizes());
  for (const at::Tensor* t : {&spatial_shapes, &level_start_index, &sampling_locations, &attention_weights}) {
    TORCH_CHECK(t->device() == value.device(), "ms_deform_attn: all inputs must be on value's device ",
                value.device(), ", got one on ", t->device());
  }
  return n;
}

inline void check_grad_output(const at::Tensor& grad_output, const MSDeformAttnSizes& n, const at::Tensor& value) {
  TORCH_CHECK(grad_output.dim() == 3 && grad_output.size(0) == n.batch && grad_output.size(1) == n.queries &&
                  grad_output.size(2) == n.heads * n.channels,
              "ms_deform_attn backward: grad_output must be (B, Q, H * D) = (", n.batch, ", ", n.queries, ", ",
              n.heads * n.channels, "), got shape ", grad_output.sizes());
  TORCH_CHECK(grad_output.device() == value.device() && grad_output.scalar_type() == value.scalar_type(),
              "ms_deform_attn backward: grad_output must have value's dtype and device (", value.scalar_type(),
              ", ", value.device(), "), got ", grad_output.scalar_type(), ", ", grad_output.device());
}

// Instruction set the CPU kernels run with: "avx2" (x86-64 CPUs with AVX2 and FMA) or "baseline".
std::string cpu_kernel_isa();
// Restricts the CPU kernels to the baseline copies ("baseline") or allows AVX2 again ("avx2").
void set_cpu_kernel_isa(const std::string& isa);

at::Tensor ms_deform_attn_forward_cpu(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights);

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    const at::Tensor& grad_output);

#ifdef WITH_CUDA
at::Tensor ms_deform_attn_forward_cuda(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights);

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    const at::Tensor& grad_output);
#endif

}  // namespace dimaskdino
