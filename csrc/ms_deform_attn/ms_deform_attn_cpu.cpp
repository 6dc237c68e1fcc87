// CPU kernels of multi-scale deformable attention (float32 and float64).
//
// Forward: parallel over (batch, head, query), queries innermost so that consecutive items sample
// nearby pixels of one head. Each item locates its L * P samples in one vectorised loop, then
// gathers the D contiguous channels of their four neighbours (vectorised over channels).
// Backward: parallel over (batch, head). grad_value of head h only receives contributions from
// head h, so the tasks write disjoint slices of grad_value and need neither atomics nor per-thread
// scratch buffers. One pass per sampling point gathers the neighbours (for the location and weight
// gradients) and scatters into grad_value.
// value may come contiguous or head-major, (B, H, S, D) in memory: see value_for_kernels.
#include "ms_deform_attn/ms_deform_attn.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <vector>

// The kernels are compiled twice on x86-64: for the baseline ISA and, chosen at run time when the
// CPU has them, for AVX2 + FMA (no -march flag: the build must run on any x86-64 machine). The
// helpers are force-inlined so that each copy is generated for its ISA.
#if defined(__GNUC__) && defined(__x86_64__)
#define DIMASKDINO_AVX2_COPY 1
#define DIMASKDINO_INLINE inline __attribute__((always_inline))
#define DIMASKDINO_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define DIMASKDINO_AVX2_COPY 0
#define DIMASKDINO_INLINE inline
#endif

#if defined(__GNUC__) || defined(__clang__)
#define DIMASKDINO_RESTRICT __restrict__
#elif defined(_MSC_VER)
#define DIMASKDINO_RESTRICT __restrict
#else
#define DIMASKDINO_RESTRICT
#endif

namespace dimaskdino {
namespace {

// Channels are processed in blocks of this many independent lanes so that the compiler vectorises
// the loops (also the dot products, which it may not reorder).
constexpr int64_t kLanes = 8;  // dot_and_scatter's pairwise sum assumes 8

// Element strides of value (and of grad_value, which has the same layout) over batch, pixel and
// head; the D channels of one pixel and head are contiguous.
struct ValueLayout {
  int64_t batch;
  int64_t pixel;
  int64_t head;
};

// Level of each of the L * P samples of a query (sample i = l * P + k lies on level l), repeated
// per sample so that locating the samples is one loop the compiler vectorises.
template <typename acc_t>
struct SampleLevels {
  SampleLevels(const int64_t* shapes, const int64_t* starts, int64_t levels, int64_t points)
      : width(levels * points), height(levels * points), width_px(levels * points), height_px(levels * points),
        start(levels * points) {
    for (int64_t i = 0; i < levels * points; ++i) {
      const int64_t l = i / points;
      height_px[i] = static_cast<int32_t>(shapes[2 * l]);
      width_px[i] = static_cast<int32_t>(shapes[2 * l + 1]);
      height[i] = static_cast<acc_t>(shapes[2 * l]);
      width[i] = static_cast<acc_t>(shapes[2 * l + 1]);
      start[i] = static_cast<int32_t>(starts[l]);
    }
  }
  std::vector<acc_t> width, height;
  std::vector<int32_t> width_px, height_px, start;
};

// Raw pointers and sizes of one call.
template <typename scalar_t>
struct Problem {
  MSDeformAttnSizes n;
  ValueLayout layout;
  const scalar_t* value;
  const SampleLevels<at::opmath_type<scalar_t>>* levels;
  const scalar_t* locations;
  const scalar_t* weights;
};

// The L * P samples of one query and head, located: for each, the flattened pixel of its top-left
// neighbour (the others are one column right and one row down), the bilinear weights of its four
// neighbours (top-left, top-right, bottom-left, bottom-right), and which lie on the map.
template <typename acc_t>
struct Samples {
  explicit Samples(int64_t count)
      : pixel(count), inside(count), fx(count), fy(count), weight(count), b0(count), b1(count), b2(count),
        b3(count) {}
  std::vector<int32_t> pixel;   // index in S of the top-left neighbour (meaningful where inside != 0)
  std::vector<int32_t> inside;  // bit k set: neighbour k lies on the map (0: the point reads zeros)
  std::vector<acc_t> fx;        // fractional distance from the left column
  std::vector<acc_t> fy;        // fractional distance from the top row
  std::vector<acc_t> weight;    // attention weight
  std::vector<acc_t> b0, b1, b2, b3;
};

constexpr int32_t kAllInside = 0xF;

// Locates `count` samples exactly like grid_sample(align_corners=False): pixel x = loc_x * width - 0.5.
// Branch-free, with restrict parameters, so that the compiler vectorises it over the samples.
template <typename scalar_t, typename acc_t>
DIMASKDINO_INLINE void locate(int64_t count, const scalar_t* DIMASKDINO_RESTRICT loc,
                              const scalar_t* DIMASKDINO_RESTRICT attention, const acc_t* DIMASKDINO_RESTRICT width,
                              const acc_t* DIMASKDINO_RESTRICT height, const int32_t* DIMASKDINO_RESTRICT width_px,
                              const int32_t* DIMASKDINO_RESTRICT height_px, const int32_t* DIMASKDINO_RESTRICT start,
                              int32_t* DIMASKDINO_RESTRICT pixel, int32_t* DIMASKDINO_RESTRICT inside,
                              acc_t* DIMASKDINO_RESTRICT fx, acc_t* DIMASKDINO_RESTRICT fy,
                              acc_t* DIMASKDINO_RESTRICT weight, acc_t* DIMASKDINO_RESTRICT b0,
                              acc_t* DIMASKDINO_RESTRICT b1, acc_t* DIMASKDINO_RESTRICT b2,
                              acc_t* DIMASKDINO_RESTRICT b3) {
  for (int64_t i = 0; i < count; ++i) {
    const acc_t x = static_cast<acc_t>(loc[2 * i]) * width[i] - acc_t(0.5);
    const acc_t y = static_cast<acc_t>(loc[2 * i + 1]) * height[i] - acc_t(0.5);
    // Some neighbour is on the map (false for NaN). x == -1 counts: its right neighbour has weight
    // 0 but a gradient.
    const int32_t near = (x >= acc_t(-1)) & (x < width[i]) & (y >= acc_t(-1)) & (y < height[i]);
    // clamped (NaN to -1) so that the conversions below stay in range; only used where near
    const acc_t xs = std::min(std::max(acc_t(-1), x), width[i]);
    const acc_t ys = std::min(std::max(acc_t(-1), y), height[i]);
    const int32_t x_trunc = static_cast<int32_t>(xs), y_trunc = static_cast<int32_t>(ys);
    const int32_t x0 = x_trunc - (xs < static_cast<acc_t>(x_trunc));  // floor
    const int32_t y0 = y_trunc - (ys < static_cast<acc_t>(y_trunc));
    const acc_t dx = xs - static_cast<acc_t>(x0), dy = ys - static_cast<acc_t>(y0);
    fx[i] = dx;
    fy[i] = dy;
    weight[i] = static_cast<acc_t>(attention[i]);
    b0[i] = (acc_t(1) - dy) * (acc_t(1) - dx);
    b1[i] = (acc_t(1) - dy) * dx;
    b2[i] = dy * (acc_t(1) - dx);
    b3[i] = dy * dx;
    const int32_t left = x0 >= 0, right = x0 + 1 < width_px[i], top = y0 >= 0, bottom = y0 + 1 < height_px[i];
    const int32_t bits = (top & left) | (top & right) << 1 | (bottom & left) << 2 | (bottom & right) << 3;
    inside[i] = bits & -near;
    pixel[i] = start[i] + y0 * width_px[i] + x0;
  }
}

// Locates the samples of bqh = (b * Q + q) * H + h.
template <typename scalar_t, typename acc_t>
DIMASKDINO_INLINE void locate_samples(const Problem<scalar_t>& p, int64_t bqh, Samples<acc_t>& s) {
  const int64_t count = p.n.levels * p.n.points;
  const SampleLevels<acc_t>& levels = *p.levels;
  locate(count, p.locations + bqh * count * 2, p.weights + bqh * count, levels.width.data(), levels.height.data(),
         levels.width_px.data(), levels.height_px.data(), levels.start.data(), s.pixel.data(), s.inside.data(),
         s.fx.data(), s.fy.data(), s.weight.data(), s.b0.data(), s.b1.data(), s.b2.data(), s.b3.data());
}

// Element offsets from value[b, 0, h, 0] of the four neighbours of sample i.
template <typename scalar_t, typename acc_t>
DIMASKDINO_INLINE void neighbour_offsets(const Problem<scalar_t>& p, const Samples<acc_t>& s, int64_t i,
                                         int64_t offset[4]) {
  const int64_t row = p.layout.pixel;
  offset[0] = static_cast<int64_t>(s.pixel[i]) * row;
  offset[1] = offset[0] + row;
  offset[2] = offset[0] + static_cast<int64_t>(p.levels->width_px[i]) * row;
  offset[3] = offset[2] + row;
}

// Queries handled between the prefetch of a query's locations and weights and their use.
// Consecutive queries of one head are H * L * P * 2 numbers apart in sampling_locations, a stride
// the hardware prefetchers do not follow, so without this every query waits on memory.
constexpr int64_t kPrefetchDistance = 8;

// Asks for the cache lines of [data, data + count) ahead of use (write = 1: about to be written).
template <int write, typename T>
DIMASKDINO_INLINE void prefetch(const T* data, int64_t count) {
#if defined(__GNUC__) || defined(__clang__)
  const char* bytes = reinterpret_cast<const char*>(data);
  for (int64_t offset = 0; offset < count * static_cast<int64_t>(sizeof(T)); offset += 64) {
    __builtin_prefetch(bytes + offset, write);
  }
#endif
}

// acc[c] += w0 * v0[c] + w1 * v1[c] + w2 * v2[c] + w3 * v3[c] for c < D.
template <int64_t kD, typename acc_t, typename scalar_t>
DIMASKDINO_INLINE void accumulate4(acc_t* DIMASKDINO_RESTRICT acc, int64_t D, const scalar_t* v0, const scalar_t* v1,
                                   const scalar_t* v2, const scalar_t* v3, acc_t w0, acc_t w1, acc_t w2, acc_t w3) {
  const int64_t channels = kD > 0 ? kD : D;
  for (int64_t c = 0; c < channels; ++c) {
    acc[c] += w0 * static_cast<acc_t>(v0[c]) + w1 * static_cast<acc_t>(v1[c]) + w2 * static_cast<acc_t>(v2[c]) +
              w3 * static_cast<acc_t>(v3[c]);
  }
}

template <int64_t kD, typename acc_t, typename scalar_t>
DIMASKDINO_INLINE void accumulate1(acc_t* DIMASKDINO_RESTRICT acc, int64_t D, const scalar_t* v, acc_t w) {
  const int64_t channels = kD > 0 ? kD : D;
  for (int64_t c = 0; c < channels; ++c) {
    acc[c] += w * static_cast<acc_t>(v[c]);
  }
}

// out[c] = sum over the samples of weight * (bilinear sample of value_bh)[c], for c < D.
template <int64_t kD, typename scalar_t, typename acc_t>
DIMASKDINO_INLINE void gather_samples(const Problem<scalar_t>& p, const scalar_t* value_bh, const Samples<acc_t>& s,
                                      int64_t D, acc_t* DIMASKDINO_RESTRICT acc, scalar_t* DIMASKDINO_RESTRICT out) {
  const int64_t count = p.n.levels * p.n.points;
  for (int64_t c = 0; c < D; ++c) acc[c] = acc_t(0);
  for (int64_t i = 0; i < count; ++i) {
    if (s.inside[i] == 0) continue;
    int64_t offset[4];
    neighbour_offsets(p, s, i, offset);
    const acc_t w = s.weight[i];
    const acc_t bilinear[4] = {s.b0[i], s.b1[i], s.b2[i], s.b3[i]};
    if (s.inside[i] == kAllInside) {
      accumulate4<kD>(acc, D, value_bh + offset[0], value_bh + offset[1], value_bh + offset[2], value_bh + offset[3],
                      w * bilinear[0], w * bilinear[1], w * bilinear[2], w * bilinear[3]);
    } else {
      for (int corner = 0; corner < 4; ++corner) {
        if (s.inside[i] >> corner & 1) accumulate1<kD>(acc, D, value_bh + offset[corner], w * bilinear[corner]);
      }
    }
  }
  for (int64_t c = 0; c < D; ++c) out[c] = static_cast<scalar_t>(acc[c]);
}

// Forward of items [begin, end), item = (b * H + h) * Q + q: consecutive items are neighbouring
// queries of one head, which sample nearby pixels of that head's slice of value.
template <typename scalar_t, int64_t kD>
DIMASKDINO_INLINE void forward_items(const Problem<scalar_t>& p, scalar_t* output, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t D = kD > 0 ? kD : p.n.channels;
  const int64_t H = p.n.heads, Q = p.n.queries, LP = p.n.levels * p.n.points;
  acc_t acc_fixed[kD > 0 ? kD : 1];
  std::vector<acc_t> acc_dynamic(kD > 0 ? 0 : D);
  acc_t* acc = kD > 0 ? acc_fixed : acc_dynamic.data();
  Samples<acc_t> samples(LP);
  const auto bqh_of = [&](int64_t item) { return ((item / (Q * H)) * Q + item % Q) * H + (item / Q) % H; };
  for (int64_t item = begin; item < end; ++item) {
    if (item + kPrefetchDistance < end) {
      const int64_t ahead = bqh_of(item + kPrefetchDistance);
      prefetch<0>(p.locations + ahead * LP * 2, LP * 2);
      prefetch<0>(p.weights + ahead * LP, LP);
      prefetch<1>(output + ahead * D, D);
    }
    const int64_t b = item / (Q * H), h = (item / Q) % H, bqh = bqh_of(item);
    locate_samples(p, bqh, samples);
    gather_samples<kD>(p, p.value + b * p.layout.batch + h * p.layout.head, samples, D, acc, output + bqh * D);
  }
}

// Returns sum_c v[c] * g[c] and adds w * g[c] to grad_v[c], for c < D.
template <int64_t kD, typename acc_t, typename scalar_t>
DIMASKDINO_INLINE acc_t dot_and_scatter(const scalar_t* DIMASKDINO_RESTRICT v, scalar_t* DIMASKDINO_RESTRICT grad_v,
                                        const acc_t* DIMASKDINO_RESTRICT g, acc_t w, int64_t D) {
  const int64_t channels = kD > 0 ? kD : D;
  const int64_t blocked = channels - channels % kLanes;
  acc_t lanes[kLanes] = {};
  for (int64_t c = 0; c < blocked; c += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) {
      lanes[j] += static_cast<acc_t>(v[c + j]) * g[c + j];
      grad_v[c + j] = static_cast<scalar_t>(static_cast<acc_t>(grad_v[c + j]) + w * g[c + j]);
    }
  }
  for (int64_t c = blocked; c < channels; ++c) {
    lanes[0] += static_cast<acc_t>(v[c]) * g[c];
    grad_v[c] = static_cast<scalar_t>(static_cast<acc_t>(grad_v[c]) + w * g[c]);
  }
  // pairwise, which vectorises (a sequential sum of the lanes would not)
  for (int64_t j = 0; j < 4; ++j) lanes[j] += lanes[j + 4];
  for (int64_t j = 0; j < 2; ++j) lanes[j] += lanes[j + 2];
  return lanes[0] + lanes[1];
}

// Backward of one query and head, g = its output gradient: scatters into grad_value_bh and writes
// the location and weight gradients of its samples.
template <int64_t kD, typename scalar_t, typename acc_t>
DIMASKDINO_INLINE void backward_samples(const Problem<scalar_t>& p, const scalar_t* value_bh,
                                        scalar_t* grad_value_bh, const Samples<acc_t>& s, const acc_t* g, int64_t D,
                                        scalar_t* DIMASKDINO_RESTRICT grad_loc,
                                        scalar_t* DIMASKDINO_RESTRICT grad_weight) {
  const int64_t count = p.n.levels * p.n.points;
  for (int64_t i = 0; i < count; ++i) {
    if (s.inside[i] == 0) {
      grad_loc[2 * i] = grad_loc[2 * i + 1] = grad_weight[i] = scalar_t(0);
      continue;
    }
    int64_t offset[4];
    neighbour_offsets(p, s, i, offset);
    const acc_t w = s.weight[i], fx = s.fx[i], fy = s.fy[i];
    const acc_t bilinear[4] = {s.b0[i], s.b1[i], s.b2[i], s.b3[i]};
    acc_t dot[4] = {};  // value of each neighbour . g
    for (int corner = 0; corner < 4; ++corner) {
      if (s.inside[i] >> corner & 1) {
        dot[corner] = dot_and_scatter<kD>(value_bh + offset[corner], grad_value_bh + offset[corner], g,
                                          w * bilinear[corner], D);
      }
    }
    const acc_t sampled = bilinear[0] * dot[0] + bilinear[1] * dot[1] + bilinear[2] * dot[2] + bilinear[3] * dot[3];
    const acc_t d_x = (acc_t(1) - fy) * (dot[1] - dot[0]) + fy * (dot[3] - dot[2]);
    const acc_t d_y = (acc_t(1) - fx) * (dot[2] - dot[0]) + fx * (dot[3] - dot[1]);
    grad_weight[i] = static_cast<scalar_t>(sampled);
    grad_loc[2 * i] = static_cast<scalar_t>(w * d_x * p.levels->width[i]);
    grad_loc[2 * i + 1] = static_cast<scalar_t>(w * d_y * p.levels->height[i]);
  }
}

// Backward of tasks [begin, end), task = b * H + h: zeroes and fills grad_value[b, :, h, :] and
// writes the location and weight gradients of every query of (b, h).
template <typename scalar_t, int64_t kD>
DIMASKDINO_INLINE void backward_heads(const Problem<scalar_t>& p, const scalar_t* grad_output, scalar_t* grad_value,
                                      scalar_t* grad_locations, scalar_t* grad_weights, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t D = kD > 0 ? kD : p.n.channels;
  const int64_t H = p.n.heads, Q = p.n.queries, LP = p.n.levels * p.n.points, S = p.n.pixels;
  acc_t g_fixed[kD > 0 ? kD : 1];
  std::vector<acc_t> g_dynamic(kD > 0 ? 0 : D);
  acc_t* g = kD > 0 ? g_fixed : g_dynamic.data();
  Samples<acc_t> samples(LP);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t b = task / H, h = task % H;
    const scalar_t* value_bh = p.value + b * p.layout.batch + h * p.layout.head;
    scalar_t* grad_value_bh = grad_value + b * p.layout.batch + h * p.layout.head;
    for (int64_t s = 0; s < S; ++s) {
      scalar_t* gv = grad_value_bh + s * p.layout.pixel;
      for (int64_t c = 0; c < D; ++c) gv[c] = scalar_t(0);
    }
    for (int64_t q = 0; q < Q; ++q) {
      const int64_t bqh = (b * Q + q) * H + h;
      if (q + kPrefetchDistance < Q) {
        const int64_t ahead = bqh + kPrefetchDistance * H;
        prefetch<0>(p.locations + ahead * LP * 2, LP * 2);
        prefetch<0>(p.weights + ahead * LP, LP);
        prefetch<0>(grad_output + ahead * D, D);
        prefetch<1>(grad_locations + ahead * LP * 2, LP * 2);
        prefetch<1>(grad_weights + ahead * LP, LP);
      }
      const scalar_t* go = grad_output + bqh * D;
      for (int64_t c = 0; c < D; ++c) g[c] = static_cast<acc_t>(go[c]);
      locate_samples(p, bqh, samples);
      backward_samples<kD>(p, value_bh, grad_value_bh, samples, g, D, grad_locations + bqh * LP * 2,
                           grad_weights + bqh * LP);
    }
  }
}

#if DIMASKDINO_AVX2_COPY
template <typename scalar_t, int64_t kD>
DIMASKDINO_TARGET_AVX2 void forward_items_avx2(const Problem<scalar_t>& p, scalar_t* output, int64_t begin,
                                               int64_t end) {
  forward_items<scalar_t, kD>(p, output, begin, end);
}

template <typename scalar_t, int64_t kD>
DIMASKDINO_TARGET_AVX2 void backward_heads_avx2(const Problem<scalar_t>& p, const scalar_t* grad_output,
                                                scalar_t* grad_value, scalar_t* grad_locations,
                                                scalar_t* grad_weights, int64_t begin, int64_t end) {
  backward_heads<scalar_t, kD>(p, grad_output, grad_value, grad_locations, grad_weights, begin, end);
}

bool cpu_supports_avx2() {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return supported;
}
#endif

// Whether the AVX2 copies may run (set_cpu_kernel_isa("baseline") turns them off, e.g. to test the
// baseline copies on an AVX2 machine).
std::atomic<bool> avx2_allowed{true};

bool use_avx2() {
#if DIMASKDINO_AVX2_COPY
  return avx2_allowed.load(std::memory_order_relaxed) && cpu_supports_avx2();
#else
  return false;
#endif
}

template <typename scalar_t, int64_t kD>
void run_forward_items(const Problem<scalar_t>& p, scalar_t* output, int64_t begin, int64_t end) {
#if DIMASKDINO_AVX2_COPY
  if (use_avx2()) return forward_items_avx2<scalar_t, kD>(p, output, begin, end);
#endif
  forward_items<scalar_t, kD>(p, output, begin, end);
}

template <typename scalar_t, int64_t kD>
void run_backward_heads(const Problem<scalar_t>& p, const scalar_t* grad_output, scalar_t* grad_value,
                        scalar_t* grad_locations, scalar_t* grad_weights, int64_t begin, int64_t end) {
#if DIMASKDINO_AVX2_COPY
  if (use_avx2()) {
    return backward_heads_avx2<scalar_t, kD>(p, grad_output, grad_value, grad_locations, grad_weights, begin, end);
  }
#endif
  backward_heads<scalar_t, kD>(p, grad_output, grad_value, grad_locations, grad_weights, begin, end);
}

// Calls fn(std::integral_constant<int64_t, kD>) with kD = D for the common head sizes (loops of a
// known length keep the accumulators in registers), else kD = 0 (D read at run time).
template <typename Fn>
void with_static_channels(int64_t D, const Fn& fn) {
  switch (D) {
    case 16: fn(std::integral_constant<int64_t, 16>()); break;
    case 32: fn(std::integral_constant<int64_t, 32>()); break;
    case 64: fn(std::integral_constant<int64_t, 64>()); break;
    default: fn(std::integral_constant<int64_t, 0>()); break;
  }
}

// Runs fn(begin, end) over [0, total) in chunks of `chunk` that the threads take in turn until none
// is left. Unlike an even split, a thread that the OS pauses (the CPU is often shared) delays the
// call by one chunk, not by its whole share.
template <typename Fn>
void parallel_chunks(int64_t total, int64_t chunk, const Fn& fn) {
  const int64_t chunks = (total + chunk - 1) / chunk;
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(chunks, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    for (int64_t i = next.fetch_add(1); i < chunks; i = next.fetch_add(1)) {
      fn(i * chunk, std::min(total, (i + 1) * chunk));
    }
  });
}

// Checks the CPU-only preconditions and that spatial_shapes / level_start_index describe value.
void check_cpu_inputs(const MSDeformAttnSizes& n, const at::Tensor& value, const at::Tensor& spatial_shapes,
                      const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                      const at::Tensor& attention_weights) {
  TORCH_CHECK(value.scalar_type() == at::kFloat || value.scalar_type() == at::kDouble,
              "ms_deform_attn (CPU kernel): value must be float32 or float64, got ", value.scalar_type());
  TORCH_CHECK(sampling_locations.scalar_type() == value.scalar_type() &&
                  attention_weights.scalar_type() == value.scalar_type(),
              "ms_deform_attn (CPU kernel): sampling_locations and attention_weights must have value's dtype ",
              value.scalar_type(), ", got ", sampling_locations.scalar_type(), " and ",
              attention_weights.scalar_type());
  const int64_t* shapes = spatial_shapes.data_ptr<int64_t>();
  const int64_t* starts = level_start_index.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t l = 0; l < n.levels; ++l) {
    TORCH_CHECK(shapes[2 * l] >= 0 && shapes[2 * l + 1] >= 0, "ms_deform_attn: spatial_shapes[", l,
                "] must be non-negative, got (", shapes[2 * l], ", ", shapes[2 * l + 1], ")");
    TORCH_CHECK(starts[l] == total, "ms_deform_attn: level_start_index[", l, "] must be ", total,
                " (the pixels of the levels before it), got ", starts[l]);
    total += shapes[2 * l] * shapes[2 * l + 1];
  }
  TORCH_CHECK(total == n.pixels, "ms_deform_attn: value has S = ", n.pixels,
              " pixels but spatial_shapes sums to ", total);
  TORCH_CHECK(n.pixels < (int64_t{1} << 31), "ms_deform_attn (CPU kernel): at most 2^31 - 1 pixels, got S = ",
              n.pixels);
}

// value (B, S, H, D) as the kernels gather from it: contiguous, or head-major ((B, H, S, D) in
// memory, which the Python wrapper passes when queries sample value many times over: the kernels
// work one head at a time, and in the (B, S, H, D) layout the pixels of one head are H * D apart,
// so they map to 1 / H of the cache sets). Other layouts are copied to contiguous.
at::Tensor value_for_kernels(const at::Tensor& value) {
  if (value.is_contiguous() || value.transpose(1, 2).is_contiguous()) return value;
  return value.contiguous();
}

ValueLayout layout_of(const at::Tensor& value) {
  return ValueLayout{value.stride(0), value.stride(1), value.stride(2)};
}

}  // namespace

std::string cpu_kernel_isa() {
  return use_avx2() ? "avx2" : "baseline";
}

void set_cpu_kernel_isa(const std::string& isa) {
  TORCH_CHECK(isa == "avx2" || isa == "baseline", "set_cpu_kernel_isa: isa must be 'avx2' or 'baseline', got '",
              isa, "'");
  avx2_allowed.store(isa == "avx2");
}

at::Tensor ms_deform_attn_forward_cpu(
    const at::Tensor& value_in,
    const at::Tensor& spatial_shapes_in,
    const at::Tensor& level_start_index_in,
    const at::Tensor& sampling_locations_in,
    const at::Tensor& attention_weights_in) {
  const MSDeformAttnSizes n = ms_deform_attn_sizes(value_in, spatial_shapes_in, level_start_index_in,
                                                   sampling_locations_in, attention_weights_in);
  const at::Tensor spatial_shapes = spatial_shapes_in.contiguous();
  const at::Tensor level_start_index = level_start_index_in.contiguous();
  const at::Tensor sampling_locations = sampling_locations_in.contiguous();
  const at::Tensor attention_weights = attention_weights_in.contiguous();
  check_cpu_inputs(n, value_in, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const at::Tensor value = value_for_kernels(value_in);
  at::Tensor output = at::empty({n.batch, n.queries, n.heads * n.channels}, value.options());
  const int64_t items = n.batch * n.heads * n.queries;
  if (items == 0 || n.channels == 0) return output.zero_();
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    const SampleLevels<at::opmath_type<scalar_t>> levels(spatial_shapes.const_data_ptr<int64_t>(),
                                                         level_start_index.const_data_ptr<int64_t>(), n.levels,
                                                         n.points);
    const Problem<scalar_t> problem{n,
                                    layout_of(value),
                                    value.const_data_ptr<scalar_t>(),
                                    &levels,
                                    sampling_locations.const_data_ptr<scalar_t>(),
                                    attention_weights.const_data_ptr<scalar_t>()};
    scalar_t* out = output.mutable_data_ptr<scalar_t>();
    // An item (one query of one head) takes about 0.2 us with 16 samples: chunks of 256 cost far
    // more than taking them, and leave hundreds of chunks to share on the encoder's 180k items.
    const int64_t chunk = 256;
    with_static_channels(n.channels, [&](auto kD) {
      parallel_chunks(items, chunk, [&](int64_t begin, int64_t end) {
        run_forward_items<scalar_t, decltype(kD)::value>(problem, out, begin, end);
      });
    });
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value_in,
    const at::Tensor& spatial_shapes_in,
    const at::Tensor& level_start_index_in,
    const at::Tensor& sampling_locations_in,
    const at::Tensor& attention_weights_in,
    const at::Tensor& grad_output_in) {
  const MSDeformAttnSizes n = ms_deform_attn_sizes(value_in, spatial_shapes_in, level_start_index_in,
                                                   sampling_locations_in, attention_weights_in);
  check_grad_output(grad_output_in, n, value_in);
  const at::Tensor spatial_shapes = spatial_shapes_in.contiguous();
  const at::Tensor level_start_index = level_start_index_in.contiguous();
  const at::Tensor sampling_locations = sampling_locations_in.contiguous();
  const at::Tensor attention_weights = attention_weights_in.contiguous();
  const at::Tensor grad_output = grad_output_in.contiguous();
  check_cpu_inputs(n, value_in, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const at::Tensor value = value_for_kernels(value_in);
  // grad_value has value's layout (the kernels address both with value's strides) and is returned
  // contiguous; every element is written by the kernel (zeroed by the task owning its slice).
  at::Tensor grad_value = at::empty_strided(value.sizes(), value.strides(), value.options());
  at::Tensor grad_locations = at::empty_like(sampling_locations);
  at::Tensor grad_weights = at::empty_like(attention_weights);
  const int64_t tasks = n.batch * n.heads;
  if (tasks == 0 || n.channels == 0 || n.queries == 0) {
    return {grad_value.zero_().contiguous(), grad_locations.zero_(), grad_weights.zero_()};
  }
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    const SampleLevels<at::opmath_type<scalar_t>> levels(spatial_shapes.const_data_ptr<int64_t>(),
                                                         level_start_index.const_data_ptr<int64_t>(), n.levels,
                                                         n.points);
    const Problem<scalar_t> problem{n,
                                    layout_of(value),
                                    value.const_data_ptr<scalar_t>(),
                                    &levels,
                                    sampling_locations.const_data_ptr<scalar_t>(),
                                    attention_weights.const_data_ptr<scalar_t>()};
    const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
    scalar_t* gv = grad_value.mutable_data_ptr<scalar_t>();
    scalar_t* gl = grad_locations.mutable_data_ptr<scalar_t>();
    scalar_t* gw = grad_weights.mutable_data_ptr<scalar_t>();
    with_static_channels(n.channels, [&](auto kD) {
      parallel_chunks(tasks, 1, [&](int64_t begin, int64_t end) {
        run_backward_heads<scalar_t, decltype(kD)::value>(problem, go, gv, gl, gw, begin, end);
      });
    });
  });
  return {grad_value.contiguous(), grad_locations, grad_weights};
}

}  // namespace dimaskdino
