#!/bin/sh
# tests/limits lowers RLIMIT_AS. Under valgrind the limit applies to valgrind's own memory too
# (its shadow memory and translations live in the same process) and valgrind dies, so this one
# program runs natively. memcheck still covers the same error paths in tests/syscall_failures,
# where mmap fails with ENOMEM by interposition.
exec ./tests/limits "$@"
