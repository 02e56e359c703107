#!/bin/sh
# perf and gdb themselves, on tests/debuginfo_tools (named JIT functions with frame pointers),
# for both backends:
#   - perf record -e cpu-clock -k 1 with CODE_CACHE_PERF=jitdump, perf inject --jit, perf report:
#     every function's name carries its share of the samples, including the one that reuses a
#     freed function's span (told apart by time);
#   - the same with CODE_CACHE_PERF=map (mprotect backend: perf reads the map for anonymous
#     memory only, and the dual backend's code is a mapping of its file);
#   - gdb -batch stopped in a helper that JIT code called: bt names both JIT frames and goes on
#     to main, info symbol names the function of each; without CODE_CACHE_GDB it cannot.
# Natively: under valgrind, perf would sample valgrind's translations and gdb would debug
# valgrind. A tool that is missing or cannot work here at all (perf_event_paranoid, no ptrace in
# a container) skips its part with the reason; the test is skipped (77) when no part could run.
# tests/debuginfo checks the files and the debugger's list themselves, under memcheck, in every
# run.
set -u
prog=$(pwd)/tests/debuginfo_tools
ran=0
failed=0

case $(uname -m) in
x86_64) ;;
*)
    echo "SKIP: the JIT code of tests/debuginfo_tools is x86-64"
    exit 77
    ;;
esac
work=$(mktemp -d "${TMPDIR:-/tmp}/codecache-tools.XXXXXX") || exit 99
trap 'rm -rf "$work"' EXIT

fail() {
    echo "FAIL: $*"
    failed=$((failed + 1))
}

# The share of samples perf report gives a symbol, in whole percent (0 when absent).
share() {
    awk -v sym="$2" '$NF == sym { sub("%", "", $1); printf "%d\n", $1; found = 1 }
        END { if (!found) print 0 }' "$1"
}

# -- perf --

perf_ok=no
if ! command -v perf >/dev/null 2>&1; then
    echo "SKIP perf: perf is not installed (Debian package linux-perf)"
elif ! perf record -q -e cpu-clock -k 1 -o "$work/probe.data" -- true >"$work/probe.log" 2>&1; then
    echo "SKIP perf: perf cannot record here:"
    sed 's/^/    /' "$work/probe.log"
else
    perf_ok=yes
fi

if [ "$perf_ok" = yes ]; then
    for backend in mprotect dual; do
        dir=$work/jitdump-$backend
        mkdir "$dir"
        # jit-<pid>.dump goes to the current directory, and perf inject's ELF files beside it.
        (cd "$dir" && CODE_CACHE_PERF=jitdump perf record -q -e cpu-clock -k 1 -o perf.data \
            "$prog" spin "$backend" >run.log 2>&1 &&
            perf inject --jit -i perf.data -o jit.data >inject.log 2>&1 &&
            perf report -i jit.data --stdio --sort sym >report.txt 2>report.log) ||
            { fail "jitdump, $backend: perf record/inject/report failed"; cat "$dir"/*.log; continue; }
        ran=1
        echo "perf, jitdump, $backend backend:"
        grep jit_spin "$dir/report.txt" | sed 's/^/    /'
        for fn in jit_spin_alpha jit_spin_beta jit_spin_gamma jit_spin_delta; do
            # Each ran a quarter of the time (alpha before its span was reused, delta after).
            pct=$(share "$dir/report.txt" "$fn")
            [ "$pct" -ge 10 ] || fail "jitdump, $backend: $fn has $pct% of the samples"
        done
        ls "$dir"/jit-*.dump >/dev/null 2>&1 || fail "jitdump, $backend: no jit-<pid>.dump"
    done

    dir=$work/map-mprotect
    mkdir "$dir"
    if (cd "$dir" && CODE_CACHE_PERF=map perf record -q -e cpu-clock -o perf.data \
        "$prog" spin mprotect >run.log 2>&1 &&
        perf report -i perf.data --stdio --sort sym >report.txt 2>report.log); then
        ran=1
        pid=$(sed -n 's/.*(pid \([0-9]*\)).*/\1/p' "$dir/run.log")
        echo "perf, perf map, mprotect backend:"
        grep jit_spin "$dir/report.txt" | sed 's/^/    /'
        # delta reused alpha's span: the map cannot say which name holds when, and perf
        # gives both functions' samples to one of them.
        for fn in jit_spin_beta jit_spin_gamma; do
            pct=$(share "$dir/report.txt" "$fn")
            [ "$pct" -ge 10 ] || fail "perf map: $fn has $pct% of the samples"
        done
        a=$(share "$dir/report.txt" jit_spin_alpha)
        d=$(share "$dir/report.txt" jit_spin_delta)
        [ $((a + d)) -ge 30 ] || fail "perf map: alpha and delta have $a% and $d%"
        [ -n "$pid" ] && rm -f "/tmp/perf-$pid.map"
    else
        fail "perf map: perf record/report failed"
        cat "$dir"/*.log
    fi
fi

# -- gdb --

gdb_run() {
    gdb -batch -nx -ex 'break debuginfo_tools_helper' -ex run -ex bt \
        -ex 'frame 1' -ex 'info symbol $pc' -ex 'frame 2' -ex 'info symbol $pc' \
        --args "$prog" gdb "$1" 2>&1
}

if ! command -v gdb >/dev/null 2>&1; then
    echo "SKIP gdb: gdb is not installed (Debian package gdb)"
else
    for backend in mprotect dual; do
        out=$work/gdb-$backend.txt
        CODE_CACHE_GDB=1 gdb_run "$backend" >"$out"
        if grep -q -E "ptrace: Operation not permitted|Couldn't get registers|not being run" "$out" ||
            ! grep -q "^Breakpoint 1, debuginfo_tools_helper" "$out"; then
            echo "SKIP gdb: gdb cannot run the program here:"
            sed 's/^/    /' "$out"
            break
        fi
        ran=1
        echo "gdb, $backend backend:"
        grep -E "^#|in section" "$out" | sed 's/^/    /'
        grep -q -E "^#1 .* in jit_gdb_inner \(\)" "$out" || fail "gdb, $backend: bt lacks jit_gdb_inner"
        grep -q -E "^#2 .* in jit_gdb_outer \(\)" "$out" || fail "gdb, $backend: bt lacks jit_gdb_outer"
        grep -q -E "^#[3-9] .*main \(" "$out" || fail "gdb, $backend: bt stops before main"
        grep -q "^jit_gdb_inner + 14 in section .text" "$out" ||
            fail "gdb, $backend: info symbol does not name jit_gdb_inner"
        grep -q "^jit_gdb_outer + 14 in section .text" "$out" ||
            fail "gdb, $backend: info symbol does not name jit_gdb_outer"
        # Without the interface gdb has nothing to name the JIT frames with.
        gdb_run "$backend" >"$out.off"
        if grep -q "jit_gdb_inner" "$out.off"; then
            fail "gdb, $backend: names without CODE_CACHE_GDB=1?"
        fi
    done
fi

if [ "$failed" -gt 0 ]; then
    echo "$failed check(s) failed"
    exit 1
fi
if [ "$ran" -eq 0 ]; then
    echo "SKIP: neither perf nor gdb could run here"
    exit 77
fi
exit 0
