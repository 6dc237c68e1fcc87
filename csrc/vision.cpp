// Registers dimaskdino's compiled ops as torch operators (torch.ops.dimaskdino.*, visible to
// torch.compile and export) and makes `dimaskdino._C` an importable Python module.
#include <torch/extension.h>
#include <torch/library.h>

#include "ms_deform_attn/ms_deform_attn.h"

TORCH_LIBRARY(dimaskdino, m) {
  m.def(
      "ms_deform_attn_forward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) -> Tensor");
  m.def(
      "ms_deform_attn_backward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights, Tensor grad_output) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dimaskdino, CPU, m) {
  m.impl("ms_deform_attn_forward", &dimaskdino::ms_deform_attn_forward_cpu);
  m.impl("ms_deform_attn_backward", &dimaskdino::ms_deform_attn_backward_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(dimaskdino, CUDA, m) {
  m.impl("ms_deform_attn_forward", &dimaskdino::ms_deform_attn_forward_cuda);
  m.impl("ms_deform_attn_backward", &dimaskdino::ms_deform_attn_backward_cuda);
}
#endif

namespace {

bool compiled_with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

// at::parallel_for is inline: without -fopenmp at compile time, the CPU kernels run on one thread.
bool compiled_with_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "dimaskdino's compiled ops; they are registered as torch.ops.dimaskdino.* on import";
  m.def("compiled_with_cuda", &compiled_with_cuda, "whether the CUDA kernels were built");
  m.def("compiled_with_openmp", &compiled_with_openmp, "whether the CPU kernels run on several threads");
  m.def("cpu_kernel_isa", &dimaskdino::cpu_kernel_isa, "instruction set of the CPU kernels: 'avx2' or 'baseline'");
  m.def("set_cpu_kernel_isa", &dimaskdino::set_cpu_kernel_isa, "'baseline' or 'avx2' (when the CPU has it)",
        pybind11::arg("isa"));
}
