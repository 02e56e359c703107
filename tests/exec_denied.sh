#!/bin/sh
# tests/exec_denied makes the kernel refuse executable memory (seccomp filters, prctl MDWE) in
# child processes. valgrind needs those very calls for its own translations, so this program runs
# natively; tests/exec_probe covers the same error paths under memcheck by interposition.
if [ -n "${CODE_CACHE_TEST_EMULATOR:-}" ]; then
    echo "skipped in the emulator ($CODE_CACHE_TEST_EMULATOR): seccomp filters are refused by qemu-user, and prctl(PR_SET_MDWE) would bind the emulator itself, whose translations need PROT_EXEC" >&2
    exit 77
fi
exec ./tests/exec_denied "$@"
