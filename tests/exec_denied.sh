#!/bin/sh
# tests/exec_denied makes the kernel refuse executable memory (seccomp filters, prctl MDWE) in
# child processes. valgrind needs those very calls for its own translations, so this program runs
# natively; tests/exec_probe covers the same error paths under memcheck by interposition.
exec ./tests/exec_denied "$@"
