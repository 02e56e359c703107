#!/bin/sh
# The shared library exports the public API and nothing else: every defined dynamic symbol is
# code_cache_* or code_chunk_* (besides the version node itself).
lib=${CODECACHE_LIB:-lib/.libs/libcodecache.so}
nm=${NM:-nm}
if [ ! -f "$lib" ]; then
    echo "exports: $lib not found" >&2
    exit 99
fi
symbols=$($nm -D --defined-only "$lib" | awk '{ print $3 }' | sed 's/@.*//' | sort -u) || exit 99
# The two names of the GDB JIT interface are exported too: a debugger looks them up by name to
# learn about JIT code (lib/gdbjit.c); they are an interface to debuggers, not to programs.
extra=$(printf '%s\n' "$symbols" | grep -v -E '^(code_cache_|code_chunk_)|^CODECACHE_[0-9]+$|^$' |
    grep -v -x -E '__jit_debug_register_code|__jit_debug_descriptor')
count=$(printf '%s\n' "$symbols" | grep -c -E '^(code_cache_|code_chunk_)')
if [ -n "$extra" ]; then
    echo "exports: symbols outside the public API are exported:" >&2
    printf '  %s\n' $extra >&2
    exit 1
fi
# The public header declares every function; each must be exported.
header=$(dirname "$0")/../include/code_cache.h
missing=0
for fn in $(grep -o -E '\b(code_cache|code_chunk)_[a-z_]+\(' "$header" | tr -d '(' | sort -u); do
    if ! printf '%s\n' "$symbols" | grep -qx "$fn"; then
        echo "exports: $fn is declared in code_cache.h but not exported" >&2
        missing=$((missing + 1))
    fi
done
[ "$missing" -eq 0 ] || exit 1
echo "exports: $count public symbols, nothing else"
