/*
 * The x86-64 code the robustness programs write (the model, the fault sweep, the ThreadSanitizer
 * stress, the soak): functions of no argument returning an int. Each writes into a buffer (the
 * RW view) code that will run at rx.
 */
#ifndef CODE_CACHE_TEST_JIT_H
#define CODE_CACHE_TEST_JIT_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

/* mov eax, imm32; ret */
#define JIT_RETURN_SIZE 6
/* sub rsp, 8; mov edi, imm32; call rel32; add rsp, 8; ret */
#define JIT_CALL_SIZE 19
/* Where the immediates are, for patches. */
#define JIT_RETURN_VALUE_AT 1
#define JIT_CALL_ARG_AT     5

/* A function of exactly len bytes (len >= 6) returning value: mov eax, imm32; nop...; ret. */
static inline void jit_return(unsigned char *rw, size_t len, int value)
{
    rw[0] = 0xb8;
    memcpy(rw + 1, &value, 4);
    memset(rw + 5, 0x90, len - 6);
    rw[len - 1] = 0xc3;
}

/* A function calling target(arg) with call rel32 and returning its result. The caller enters
 * with rsp = 8 mod 16, the callee must see 0 mod 16. False when target is out of rel32 reach of
 * the call (the library said otherwise: a bug). */
static inline bool jit_call(unsigned char *rw, uintptr_t rx, const void *target, int arg)
{
    static const unsigned char code[JIT_CALL_SIZE] = {
        0x48, 0x83, 0xec, 0x08,    /* sub rsp, 8 */
        0xbf, 0,    0,    0,    0, /* mov edi, imm32 */
        0xe8, 0,    0,    0,    0, /* call rel32 */
        0x48, 0x83, 0xc4, 0x08,    /* add rsp, 8 */
        0xc3,                      /* ret */
    };
    int64_t disp = (int64_t)(uintptr_t)target - (int64_t)(rx + 14);
    if (disp < INT32_MIN || disp > INT32_MAX)
        return false;
    int32_t d = (int32_t)disp;
    memcpy(rw, code, sizeof code);
    memcpy(rw + JIT_CALL_ARG_AT, &arg, 4);
    memcpy(rw + 10, &d, 4);
    return true;
}

/* A page of its own far from everything (asked at 1 << 45): lea eax, [rdi + rdi + 5]; ret. For
 * calls that need a veneer. NULL + errno when it cannot be mapped. */
static inline int (*jit_far_function(void))(int)
{
    static const unsigned char code[] = {0x8d, 0x44, 0x3f, 0x05, 0xc3};
    void *p = mmap((void *)((uintptr_t)1 << 45), 4096, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    memcpy(p, code, sizeof code);
    if (mprotect(p, 4096, PROT_READ | PROT_EXEC) != 0) {
        munmap(p, 4096);
        return NULL;
    }
    return (int (*)(int))p;
}

#endif
