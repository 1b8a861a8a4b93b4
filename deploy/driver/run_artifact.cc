// Runs a DeployGym artifact with only the TVM runtime: no Python on the board (or under qemu-aarch64).
//   run_artifact deployment.so input.f32 output.f32 C H W
// input.f32: the (1, C, H, W) image as raw little-endian float32; output.f32: the logits, the same.
#include <dlpack/dlpack.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <vector>

namespace ffi = tvm::ffi;

struct CPUAlloc {
  void AllocData(DLTensor* t) { t->data = std::malloc(ffi::GetDataSize(*t)); }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

int main(int argc, char** argv) {
  if (argc != 7) {
    std::fprintf(stderr, "usage: %s deployment.so input.f32 output.f32 C H W\n", argv[0]);
    return 2;
  }
  std::vector<int64_t> shape = {1, std::atoll(argv[4]), std::atoll(argv[5]), std::atoll(argv[6])};
  DLDevice cpu{kDLCPU, 0};
  DLDataType f32{kDLFloat, 32, 1};
  ffi::Tensor image = ffi::Tensor::FromNDAlloc(CPUAlloc(), ffi::ShapeView(shape.data(), shape.size()), f32, cpu);
  std::ifstream in(argv[2], std::ios::binary);
  in.read(static_cast<char*>(image.data_ptr()), ffi::GetDataSize(image));
  if (!in) {
    std::fprintf(stderr, "error: %s holds fewer than %lld floats\n", argv[2], (long long)(shape[1] * shape[2] * shape[3]));
    return 2;
  }
  ffi::Module lib = ffi::Module::LoadFromFile(argv[1]);
  ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
  // device type, id, allocator (2: pooled), for the host device too
  vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2, static_cast<int>(kDLCPU), 0, 2);
  ffi::Tensor logits = vm->GetFunction("main").value()(image).cast<ffi::Tensor>();
  std::ofstream out(argv[3], std::ios::binary);
  out.write(static_cast<const char*>(logits.data_ptr()), ffi::GetDataSize(logits));
  std::printf("%lld logits written to %s\n", (long long)logits.numel(), argv[3]);
  return 0;
}
