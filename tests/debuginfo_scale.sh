#!/bin/sh
# tests/debuginfo_scale registers 1,000 to 10,000 chunks with the GDB JIT interface and fails if
# the cost per chunk grows with their number. Natively: it measures time, which memcheck would
# stretch tenfold and unevenly.
exec ./tests/debuginfo_scale "$@"
