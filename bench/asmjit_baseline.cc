/*
 * asmjit's JitAllocator as a baseline for bench/alloc and bench/dual. Built only when configure
 * found libasmjit-dev. Note what it measures: by default JitAllocator maps its blocks read, write
 * and execute at once (no W^X, nothing to seal), so its time is allocation and copying alone;
 * with kUseDualMapping it writes through a second, writable view of the same memory.
 */
#include <asmjit/core.h>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>
#include <vector>

#include "asmjit_baseline.h"
#include "bench.h"

int bench_asmjit_alloc(size_t count, size_t fsize, const void *code, bool dual, double *ns)
{
    asmjit::JitAllocator::CreateParams params{};
    if (dual)
        params.options = asmjit::JitAllocatorOptions::kUseDualMapping;
    asmjit::JitAllocator allocator(&params);
    std::vector<void *> rx(count);
    double t0 = bench_thread_cpu_ns();
    for (size_t i = 0; i < count; i++) {
        void *w = nullptr;
        if (allocator.alloc(&rx[i], &w, fsize) != asmjit::kErrorOk)
            return -1;
        std::memcpy(w, code, fsize);
        uint32_t index = (uint32_t)i;
        std::memcpy(static_cast<unsigned char *>(w) + 1, &index, sizeof index);
    }
    *ns = bench_thread_cpu_ns() - t0;
    uint32_t (*fn)(void);
    std::memcpy(&fn, &rx[count - 1], sizeof fn);
    if (fn() != (uint32_t)(count - 1)) {
        std::fprintf(stderr, "alloc: asmjit: the last function returned the wrong value\n");
        return -1;
    }
    for (size_t i = 0; i < count; i++)
        allocator.release(rx[i]);
    return 0;
}

struct bench_jit {
    asmjit::JitAllocator allocator;
    explicit bench_jit(const asmjit::JitAllocator::CreateParams *params) : allocator(params) {}
};

struct bench_jit *bench_jit_new(bool dual)
{
    asmjit::JitAllocator::CreateParams params{};
    if (dual)
        params.options = asmjit::JitAllocatorOptions::kUseDualMapping;
    return new (std::nothrow) bench_jit(&params);
}

int bench_jit_alloc(struct bench_jit *jit, size_t size, void **rx, void **rw)
{
    return jit->allocator.alloc(rx, rw, size) == asmjit::kErrorOk ? 0 : -1;
}

int bench_jit_release(struct bench_jit *jit, void *rx)
{
    return jit->allocator.release(rx) == asmjit::kErrorOk ? 0 : -1;
}

void bench_jit_statistics(const struct bench_jit *jit, size_t *used, size_t *reserved,
                          size_t *overhead)
{
    asmjit::JitAllocator::Statistics s = jit->allocator.statistics();
    *used = s.usedSize();
    *reserved = s.reservedSize();
    *overhead = s.overheadSize();
}

void bench_jit_delete(struct bench_jit *jit)
{
    delete jit;
}

const char *bench_asmjit_version(void)
{
    static char version[32];
    std::snprintf(version, sizeof version, "%u.%u.%u", (ASMJIT_LIBRARY_VERSION >> 16) & 0xff,
                  (ASMJIT_LIBRARY_VERSION >> 8) & 0xff, ASMJIT_LIBRARY_VERSION & 0xff);
    return version;
}
