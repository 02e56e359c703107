#!/bin/sh
# tests/limits lowers RLIMIT_AS. Under valgrind the limit applies to valgrind's own memory too
# (its shadow memory and translations live in the same process) and valgrind dies, so this one
# program runs natively. memcheck still covers the same error paths in tests/syscall_failures,
# where mmap fails with ENOMEM by interposition.
if [ -n "${CODE_CACHE_TEST_EMULATOR:-}" ]; then
    echo "skipped in the emulator ($CODE_CACHE_TEST_EMULATOR): qemu-user ignores RLIMIT_AS (it would bind the emulator, not the program)" >&2
    exit 77
fi
# Like the chunk tests, once per backend (tests/helpers.h).
./tests/limits "$@" || exit $?
CODE_CACHE_TEST_BACKEND=dual exec ./tests/limits "$@"
