#!/bin/sh
# tests/dlopen, run natively, not under tests/run-valgrind: what it checks is what glibc's loader
# does with a program started in exactly the environment the test gives it. Under valgrind the
# child would start inside valgrind, with valgrind's own libraries preloaded (and LD_PRELOAD, which
# the test clears for the child, is how they get there); the program also takes 27 s there instead
# of 0.2. memcheck sees the same library calls in every other test program.
#
# The remedy the test applies is the one README.md documents, read from there, so the
# documentation and the test cannot drift apart; the manual must give the same setting.
srcdir=${srcdir:-$(dirname "$0")/..}
readme=$srcdir/README.md
manual=$srcdir/doc/code_cache.3
tunable=$(grep -o -E 'GLIBC_TUNABLES=glibc\.rtld\.optional_static_tls=[0-9]+' "$readme" | head -n 1)
if [ -z "$tunable" ]; then
    echo "dlopen.sh: README.md documents no GLIBC_TUNABLES=glibc.rtld.optional_static_tls=N" >&2
    exit 1
fi
# The man page escapes its dots and hyphens; compare with the escapes removed.
if ! sed 's/\\//g' "$manual" | grep -q -F "$tunable"; then
    echo "dlopen.sh: doc/code_cache.3 does not give the README's remedy, $tunable" >&2
    exit 1
fi
CODECACHE_DLOPEN_TUNABLE=$tunable
export CODECACHE_DLOPEN_TUNABLE
# A cross build runs it in the emulator like every other program (the child too, through the
# binfmt_misc handler that tests/run-emulated relies on).
if [ -n "${CODE_CACHE_TEST_EMULATOR:-}" ]; then
    exec ./tests/run-emulated ./tests/dlopen "$@"
fi
exec ./tests/dlopen "$@"
