/* Stand-ins for the CUDA-only c10/ATen symbols that PyPI's CUDA-linked torchvision needs at load
 * time. CPU torch never calls them; if anything ever does, abort loudly instead of misbehaving. */
#include <stdio.h>
#include <stdlib.h>

static void afmrl_cuda_stub_called(const char *name) {
    fprintf(stderr, "afmrl CPU shim: CUDA function %s called on a CPU-only torch build\n", name);
    abort();
}

#define STUB(sym) void sym(void) { afmrl_cuda_stub_called(#sym); }
STUB(_ZN2at4cuda26getCurrentDevicePropertiesEv)
STUB(_ZN3c104cuda12device_countEv)
STUB(_ZN3c104cuda14ExchangeDeviceEa)
STUB(_ZN3c104cuda14MaybeSetDeviceEa)
STUB(_ZN3c104cuda14current_deviceEv)
STUB(_ZN3c104cuda17getStreamFromPoolEba)
STUB(_ZN3c104cuda17getStreamFromPoolEia)
STUB(_ZN3c104cuda20getCurrentCUDAStreamEa)
STUB(_ZN3c104cuda20getDefaultCUDAStreamEa)
STUB(_ZN3c104cuda20setCurrentCUDAStreamENS0_10CUDAStreamE)
STUB(_ZN3c104cuda29c10_cuda_check_implementationEiPKcS2_jb)
STUB(_ZN3c104cuda9GetDeviceEPa)
STUB(_ZN3c104cuda9SetDeviceEab)
STUB(_ZNK3c104cuda10CUDAStream11synchronizeEv)
STUB(_ZNK3c104cuda10CUDAStream5queryEv)
STUB(_ZNK3c104cuda10CUDAStream6streamEv)

/* std::atomic<CUDAAllocator*> c10::cuda::CUDACachingAllocator::allocator */
void *_ZN3c104cuda20CUDACachingAllocator9allocatorE = 0;
