#!/bin/sh
# tests/debuginfo_scale registers 1,000 to 10,000 chunks with the GDB JIT interface and fails if
# the cost per chunk grows with their number. Natively: it measures time, which memcheck would
# stretch tenfold and unevenly. In a cross build, in the emulator (its translation cost is the same
# for every chunk, so the growth it looks for still shows).
# shellcheck disable=SC2086
exec ${CODE_CACHE_TEST_EMULATOR:-} ./tests/debuginfo_scale "$@"
