// CUDA kernels of multi-scale deformable attention (float32, float64, float16, bfloat16).
//
// A group of G lanes (G = the smallest power of two >= D, at most 32) handles one (batch, query,
// head); lane i handles channels i, i + G, ... so the lanes of a group read consecutive channels of
// each neighbouring pixel (coalesced). Sums are accumulated in float32 (float64 for float64 input);
// locations and weights are read in that precision too.
// Backward: each lane scatters into grad_value with atomicAdd (coalesced over the group; into a
// float32 buffer for float16/bfloat16 inputs), and the group reduces the location and weight
// gradients of each sampling point with warp shuffles, so they need no atomics.
#include "ms_deform_attn/ms_deform_attn.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace dimaskdino {
namespace {

constexpr int kBlockThreads = 256;
constexpr int kWarpLanes = 32;

int lanes_per_group(int64_t D) {
  int lanes = 1;
  while (lanes < D && lanes < kWarpLanes) lanes *= 2;
  return lanes;
}

__device__ __forceinline__ float floor_of(float x) { return floorf(x); }
__device__ __forceinline__ double floor_of(double x) { return floor(x); }

// Where one sampling point falls on a level: its four neighbouring pixels (top-left, top-right,
// bottom-left, bottom-right), their bilinear weights and which lie on the map.
template <typename acc_t>
struct Neighbours {
  int64_t pixel[4];
  acc_t weight[4];
  bool inside[4];
  acc_t fx;
  acc_t fy;
};

// Pixel coordinates as grid_sample(align_corners=False). False when no neighbour is on the map.
template <typename acc_t>
__device__ __forceinline__ bool find_neighbours(acc_t loc_x, acc_t loc_y, int64_t height, int64_t width,
                                                Neighbours<acc_t>& n) {
  const acc_t x = loc_x * static_cast<acc_t>(width) - acc_t(0.5);
  const acc_t y = loc_y * static_cast<acc_t>(height) - acc_t(0.5);
  if (!(x >= acc_t(-1) && x < static_cast<acc_t>(width) && y >= acc_t(-1) && y < static_cast<acc_t>(height))) {
    return false;
  }
  const acc_t left = floor_of(x);
  const acc_t top = floor_of(y);
  const int64_t x0 = static_cast<int64_t>(left);
  const int64_t y0 = static_cast<int64_t>(top);
  n.fx = x - left;
  n.fy = y - top;
  const acc_t gx = acc_t(1) - n.fx;
  const acc_t gy = acc_t(1) - n.fy;
  n.weight[0] = gy * gx;
  n.weight[1] = gy * n.fx;
  n.weight[2] = n.fy * gx;
  n.weight[3] = n.fy * n.fx;
  const bool left_in = x0 >= 0, right_in = x0 + 1 < width, top_in = y0 >= 0, bottom_in = y0 + 1 < height;
  n.inside[0] = top_in && left_in;
  n.inside[1] = top_in && right_in;
  n.inside[2] = bottom_in && left_in;
  n.inside[3] = bottom_in && right_in;
  n.pixel[0] = y0 * width + x0;
  n.pixel[1] = n.pixel[0] + 1;
  n.pixel[2] = n.pixel[0] + width;
  n.pixel[3] = n.pixel[2] + 1;
  return true;
}

struct Sizes {
  int64_t groups;  // B * Q * H
  int64_t pixels;  // S
  int64_t heads;
  int64_t channels;
  int64_t queries;
  int64_t levels;
  int64_t points;
  int lanes;  // G
};

// One thread per (group, lane); no thread leaves early in the backward (it shuffles), so both
// kernels are launched over whole groups and threads past the end mirror group 0 without writing.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kBlockThreads) forward_kernel(
    const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes, const int64_t* __restrict__ starts,
    const acc_t* __restrict__ locations, const acc_t* __restrict__ weights, scalar_t* __restrict__ output,
    Sizes n) {
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t group = thread / n.lanes;
  const int lane = static_cast<int>(thread % n.lanes);
  if (group >= n.groups) return;
  const int64_t H = n.heads, D = n.channels, L = n.levels, P = n.points, row = H * D;
  const int64_t h = group % H;
  const int64_t b = group / (n.queries * H);
  const scalar_t* value_bh = value + b * n.pixels * row + h * D;
  for (int64_t c = lane; c < D; c += n.lanes) {
    const acc_t* loc = locations + group * L * P * 2;
    const acc_t* weight = weights + group * L * P;
    acc_t acc = acc_t(0);
    for (int64_t l = 0; l < L; ++l) {
      const int64_t height = shapes[2 * l], width = shapes[2 * l + 1], start = starts[l];
      const bool level_fits = start >= 0 && start + height * width <= n.pixels;  // guards bad metadata
      const scalar_t* value_level = value_bh + start * row + c;
      for (int64_t k = 0; k < P; ++k, loc += 2, ++weight) {
        Neighbours<acc_t> nb;
        if (!level_fits || !find_neighbours<acc_t>(loc[0], loc[1], height, width, nb)) continue;
        acc_t sample = acc_t(0);
#pragma unroll
        for (int corner = 0; corner < 4; ++corner) {
          if (nb.inside[corner]) {
            sample += nb.weight[corner] * static_cast<acc_t>(value_level[nb.pixel[corner] * row]);
          }
        }
        acc += *weight * sample;
      }
    }
    output[group * D + c] = static_cast<scalar_t>(acc);
  }
}

// Sum of x over the G lanes of this lane's group (G a power of two <= 32, groups aligned in the warp).
template <typename acc_t>
__device__ __forceinline__ acc_t group_sum(acc_t x, int lanes) {
  for (int offset = lanes / 2; offset > 0; offset /= 2) {
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  }
  return x;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kBlockThreads) backward_kernel(
    const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes, const int64_t* __restrict__ starts,
    const acc_t* __restrict__ locations, const acc_t* __restrict__ weights, const scalar_t* __restrict__ grad_output,
    acc_t* __restrict__ grad_value, acc_t* __restrict__ grad_locations, acc_t* __restrict__ grad_weights, Sizes n) {
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool active = thread / n.lanes < n.groups;
  const int64_t group = active ? thread / n.lanes : 0;
  const int lane = static_cast<int>(thread % n.lanes);
  const int64_t H = n.heads, D = n.channels, L = n.levels, P = n.points, row = H * D;
  const int64_t h = group % H;
  const int64_t b = group / (n.queries * H);
  const scalar_t* value_bh = value + b * n.pixels * row + h * D;
  acc_t* grad_value_bh = grad_value + b * n.pixels * row + h * D;
  const scalar_t* go = grad_output + group * D;
  const acc_t* loc = locations + group * L * P * 2;
  const acc_t* weight = weights + group * L * P;
  acc_t* grad_loc = grad_locations + group * L * P * 2;
  acc_t* grad_weight = grad_weights + group * L * P;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t height = shapes[2 * l], width = shapes[2 * l + 1], start = starts[l];
    const bool level_fits = start >= 0 && start + height * width <= n.pixels;
    const scalar_t* value_level = value_bh + start * row;
    acc_t* grad_value_level = grad_value_bh + start * row;
    for (int64_t k = 0; k < P; ++k, loc += 2, grad_loc += 2, ++weight, ++grad_weight) {
      Neighbours<acc_t> nb;
      const bool found = level_fits && find_neighbours<acc_t>(loc[0], loc[1], height, width, nb);
      const acc_t w = *weight;
      acc_t d_weight = acc_t(0), d_x = acc_t(0), d_y = acc_t(0);
      if (found) {
        for (int64_t c = lane; c < D; c += n.lanes) {
          const acc_t g = static_cast<acc_t>(go[c]);
          acc_t v[4];
#pragma unroll
          for (int corner = 0; corner < 4; ++corner) {
            v[corner] = nb.inside[corner] ? static_cast<acc_t>(value_level[nb.pixel[corner] * row + c]) : acc_t(0);
            if (active && nb.inside[corner]) {
              atomicAdd(grad_value_level + nb.pixel[corner] * row + c, w * nb.weight[corner] * g);
            }
          }
          d_weight += g * (nb.weight[0] * v[0] + nb.weight[1] * v[1] + nb.weight[2] * v[2] + nb.weight[3] * v[3]);
          d_x += g * ((acc_t(1) - nb.fy) * (v[1] - v[0]) + nb.fy * (v[3] - v[2]));
          d_y += g * ((acc_t(1) - nb.fx) * (v[2] - v[0]) + nb.fx * (v[3] - v[1]));
        }
      }
      d_weight = group_sum(d_weight, n.lanes);
      d_x = group_sum(d_x, n.lanes);
      d_y = group_sum(d_y, n.lanes);
      if (active && lane == 0) {
        *grad_weight = d_weight;
        grad_loc[0] = w * d_x * static_cast<acc_t>(width);
        grad_loc[1] = w * d_y * static_cast<acc_t>(height);
      }
    }
  }
}

void check_cuda_dtypes(const at::Tensor& value, const at::Tensor& sampling_locations,
                       const at::Tensor& attention_weights) {
  const auto dtype = value.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
              "ms_deform_attn (CUDA kernel): value must be float32, float64, float16 or bfloat16, got ", dtype);
  const bool reduced = dtype == at::kHalf || dtype == at::kBFloat16;
  for (const at::Tensor* t : {&sampling_locations, &attention_weights}) {
    TORCH_CHECK(t->scalar_type() == dtype || (reduced && t->scalar_type() == at::kFloat),
                "ms_deform_attn (CUDA kernel): sampling_locations and attention_weights must have value's dtype ",
                dtype, reduced ? " (or float32)" : "", ", got ", t->scalar_type());
  }
}

Sizes cuda_sizes(const MSDeformAttnSizes& n) {
  return Sizes{n.batch * n.queries * n.heads, n.pixels, n.heads, n.channels, n.queries, n.levels, n.points,
               lanes_per_group(n.channels)};
}

unsigned int blocks_for(const Sizes& s) {
  const int64_t threads = s.groups * s.lanes;
  return static_cast<unsigned int>((threads + kBlockThreads - 1) / kBlockThreads);
}

}  // namespace

at::Tensor ms_deform_attn_forward_cuda(
    const at::Tensor& value_in,
    const at::Tensor& spatial_shapes_in,
    const at::Tensor& level_start_index_in,
    const at::Tensor& sampling_locations_in,
    const at::Tensor& attention_weights_in) {
  const MSDeformAttnSizes n = ms_deform_attn_sizes(value_in, spatial_shapes_in, level_start_index_in,
                                                   sampling_locations_in, attention_weights_in);
  TORCH_CHECK(value_in.is_cuda(), "ms_deform_attn (CUDA kernel): value must be a CUDA tensor");
  check_cuda_dtypes(value_in, sampling_locations_in, attention_weights_in);
  const c10::cuda::CUDAGuard device_guard(value_in.device());
  const auto acc_dtype = at::toOpMathType(value_in.scalar_type());
  const at::Tensor value = value_in.contiguous();
  const at::Tensor spatial_shapes = spatial_shapes_in.contiguous();
  const at::Tensor level_start_index = level_start_index_in.contiguous();
  const at::Tensor locations = sampling_locations_in.to(acc_dtype).contiguous();
  const at::Tensor weights = attention_weights_in.to(acc_dtype).contiguous();
  at::Tensor output = at::empty({n.batch, n.queries, n.heads * n.channels}, value.options());
  const Sizes sizes = cuda_sizes(n);
  if (sizes.groups == 0 || n.channels == 0) return output.zero_();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, acc_t><<<blocks_for(sizes), kBlockThreads, 0, stream>>>(
        value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
        level_start_index.const_data_ptr<int64_t>(), locations.const_data_ptr<acc_t>(),
        weights.const_data_ptr<acc_t>(), output.mutable_data_ptr<scalar_t>(), sizes);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& value_in,
    const at::Tensor& spatial_shapes_in,
    const at::Tensor& level_start_index_in,
    const at::Tensor& sampling_locations_in,
    const at::Tensor& attention_weights_in,
    const at::Tensor& grad_output_in) {
  const MSDeformAttnSizes n = ms_deform_attn_sizes(value_in, spatial_shapes_in, level_start_index_in,
                                                   sampling_locations_in, attention_weights_in);
  TORCH_CHECK(value_in.is_cuda(), "ms_deform_attn (CUDA kernel): value must be a CUDA tensor");
  check_cuda_dtypes(value_in, sampling_locations_in, attention_weights_in);
  check_grad_output(grad_output_in, n, value_in);
  // The atomicAdd scatter into grad_value sums in a varying order: under
  // torch.use_deterministic_algorithms(True) this raises (or warns with warn_only), like torch's
  // own non-deterministic CUDA kernels (e.g. index_add_, grid_sampler backward).
  at::globalContext().alertNotDeterministic("ms_deform_attn_backward_cuda");
  const c10::cuda::CUDAGuard device_guard(value_in.device());
  const auto acc_dtype = at::toOpMathType(value_in.scalar_type());
  const at::Tensor value = value_in.contiguous();
  const at::Tensor spatial_shapes = spatial_shapes_in.contiguous();
  const at::Tensor level_start_index = level_start_index_in.contiguous();
  const at::Tensor locations = sampling_locations_in.to(acc_dtype).contiguous();
  const at::Tensor weights = attention_weights_in.to(acc_dtype).contiguous();
  const at::Tensor grad_output = grad_output_in.contiguous();
  // grad_value is accumulated in the accumulation dtype (float32 for float16/bfloat16 inputs).
  at::Tensor grad_value = at::zeros(value.sizes(), value.options().dtype(acc_dtype));
  at::Tensor grad_locations = at::zeros(locations.sizes(), locations.options());
  at::Tensor grad_weights = at::zeros(weights.sizes(), weights.options());
  const Sizes sizes = cuda_sizes(n);
  if (sizes.groups > 0 && n.channels > 0) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      backward_kernel<scalar_t, acc_t><<<blocks_for(sizes), kBlockThreads, 0, stream>>>(
          value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
          level_start_index.const_data_ptr<int64_t>(), locations.const_data_ptr<acc_t>(),
          weights.const_data_ptr<acc_t>(), grad_output.const_data_ptr<scalar_t>(),
          grad_value.mutable_data_ptr<acc_t>(), grad_locations.mutable_data_ptr<acc_t>(),
          grad_weights.mutable_data_ptr<acc_t>(), sizes);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {grad_value.to(value_in.scalar_type()), grad_locations.to(sampling_locations_in.scalar_type()),
          grad_weights.to(attention_weights_in.scalar_type())};
}

}  // namespace dimaskdino
