/*
 * Placement: choosing and claiming the address space of a cache so that a direct branch from any
 * of its bytes reaches every target (x86-64 call rel32: -2 GiB .. 2 GiB - 1).
 *
 * Nobody knows in advance where free space near the targets is: ASLR moves everything, and under
 * valgrind a PIE executable sits at 0x108000, so looking only below the target fails. The steps
 * (DESIGN.md, "Placement"):
 *
 *   1. The window: the addresses a region may cover and still reach every target, clipped to
 *      [vm.mmap_min_addr, arch_user_top). Computed without any wrap-around.
 *   2. Fast path: a few MAP_FIXED_NOREPLACE probes at random bases in the window. Most processes
 *      are sparse, so a random spot is usually free and nothing needs to be parsed. In a window
 *      narrower than 1 GiB (PLACE_NARROW_WINDOW), a random spot near one of its ends.
 *   3. Slow path: read /proc/self/maps once, walk its gaps once (below and above the targets),
 *      and pick a random fitting base, each base equally likely, so a gap is chosen in proportion
 *      to the room it offers; in a narrow window, a random base near one end of that gap. With
 *      CODE_CACHE_NO_RANDOM=1 the fitting base nearest to the targets is taken instead, and the
 *      probes are skipped: the layout is then reproducible.
 *   4. Claim with MAP_FIXED_NOREPLACE and check what the kernel gave back before trusting it.
 *
 * Why MAP_FIXED_NOREPLACE: a plain hint is silently moved elsewhere when anything is in the way,
 * and MAP_FIXED silently replaces whatever is there (another library's code, a thread stack).
 * NOREPLACE maps exactly there or fails with EEXIST, so the map we read, which may be stale the
 * moment it is read, never needs to be trusted: the kernel arbitrates.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdatomic.h>
#include <time.h>

#include "addrspace.h"
#include "arch.h"
#include "debug.h"
#include "maps.h"
#include "os.h"
#include "place.h"

/* Random probes before reading the map. Each costs one mmap (~2 us); four fail together only in
 * a window that is mostly full, which the scan handles better. */
#define PLACE_PROBES 4

/* Scans of the map. A scan fails to claim its pick only when another thread took the spot
 * between our read and our mmap (or the kernel refused the spot for a reason the map does not
 * show); each new scan sees the newcomer. A bound keeps a pathological race, or a kernel that
 * refuses everything, from spinning forever: it ends in ENOMEM instead. */
#define PLACE_ROUNDS 8

/*
 * A narrow window (aarch64's +-128 MiB of bl, a small reach asked for, a wide NEAR_OBJECT span)
 * holds few caches, and a small one claimed at a uniformly random base splits the gap it lands
 * in: a larger cache created next may then find no gap long enough although the window has room
 * for both (tests/jsonjit under qemu-aarch64 failed 3 times in 80 that way: a 4 MiB cache, then a
 * 64 MiB one). In such a window a region is placed at most 1/PLACE_NARROW_SLACK of the window's
 * length from one end, chosen at random: of the window, for the probes; of the gap picked in
 * proportion to its room, for the scan. A cache then leaves the rest of its gap in one piece,
 * but for that sliver. The price is entropy: in an empty window, 2/16 of the bases instead of
 * all of them (3 bits fewer: 2^13 bases of 4 KiB in aarch64's 256 MiB window), and the region
 * lies within the slack of a neighbouring mapping or of the window's edge. Wider windows
 * (x86-64's 4 GiB) keep every fitting base equally likely, as do blind probes (no /proc) and a
 * search that met a refusal the map did not explain.
 */
#define PLACE_NARROW_WINDOW ((uintptr_t)1 << 30)
#define PLACE_NARROW_SLACK  16 /* the slack at a gap's end is 1/16 of the window */

/* Without a readable /proc (some chroots and containers) the probes are all we have. */
#define PLACE_BLIND_ROUNDS 64

/* Spots picked by a scan and then refused for a reason the map does not show are remembered so
 * that the next scan avoids them (one per round at most), after the stack's room (addrspace.c). */
#define PLACE_MAX_EXCLUDED (1 + PLACE_ROUNDS)

/*
 * Whether this kernel honours MAP_FIXED_NOREPLACE (Linux 4.17+). Older kernels ignore unknown
 * mmap flags, so the flag degrades to a hint; valgrind and some emulators do the same on an
 * occupied address. Either way the result is a mapping somewhere else, never a clobbered one.
 * Once seen, the whole process stops asking for the flag and uses plain hints, each result
 * verified. Process-wide because the kernel (or the emulator) does not change under us.
 */
static atomic_bool place_noreplace_ignored;

struct place_range {
    uintptr_t lo, hi;
};

/* ---- The state of one placement ---- */

struct place {
    const struct place_request *req;
    uintptr_t lo, hi;  /* the window: the region must lie inside [lo, hi), page aligned */
    uintptr_t last;    /* highest base: hi - size */
    uint64_t rng;      /* splitmix64 state */
    bool nearest;      /* CODE_CACHE_NO_RANDOM */
    bool narrow;       /* the window is narrower than PLACE_NARROW_WINDOW */
    unsigned attempts; /* mmap calls made */
    unsigned refused;  /* of them, refused with ENOMEM on a spot the map showed free */
    const char *how;   /* the phase that is running, for CODE_CACHE_DEBUG */
    struct place_range excluded[PLACE_MAX_EXCLUDED];
    unsigned nexcluded;
    /* One scan: */
    size_t gaps, gaps_in_window, gaps_fitting;
    uint64_t choices; /* fitting bases seen so far (reservoir sampling) */
    uintptr_t pick;
    uintptr_t pick_distance;
    bool found;
};

/*
 * splitmix64: a cheap generator with a per-call state, so concurrent placements neither share a
 * lock nor disturb the program's rand(). The multiplications are meant to wrap (they are a hash,
 * not address arithmetic). Seeded from getrandom, or from the clock and a stack address when
 * getrandom is not available; in nearest mode from a constant, so that even the fallback without
 * /proc is reproducible.
 */
static uint64_t place_next(struct place *pl)
{
    uint64_t z = (pl->rng += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static void place_seed(struct place *pl)
{
    if (pl->nearest) {
        pl->rng = 0x636f646563616368u;
        return;
    }
    pl->rng = os_random();
}

/* A uniformly chosen base in [lo, last], both page aligned. */
static uintptr_t place_random_base(struct place *pl, uintptr_t lo, uintptr_t last)
{
    uint64_t bases = (last - lo) / os_page_size + 1;
    return lo + (uintptr_t)(place_next(pl) % bases) * os_page_size;
}

/* In a narrow window: a base in [lo, last] at most the slack away from lo or from last, either
 * end equally likely, every such base of that end equally likely. */
static uintptr_t place_base_near_an_end(struct place *pl, uintptr_t lo, uintptr_t last)
{
    uintptr_t slack = align_down((pl->hi - pl->lo) / PLACE_NARROW_SLACK, os_page_size);
    if (last - lo > slack) {
        if (place_next(pl) & 1)
            lo = last - slack;
        else
            last = lo + slack;
    }
    return place_random_base(pl, lo, last);
}

/*
 * The window of a region of req->size bytes, by the reach rule of arch.h. The region's origins
 * run from base + arch_origin_first to base + size - arch_origin_last, and each must satisfy
 * -reach <= t - o <= reach - 1 for every target byte t in [tlo, thi):
 *     from the first origin to the last target:  base >= thi - reach - arch_origin_first
 *     from the last origin to the first target:  base + size <= tlo + reach + arch_origin_last
 * so the region lies in [thi - reach - first, tlo + reach + last): room for
 * 2 * reach + first + last - (thi - tlo) bytes. Each bound is computed only when it cannot wrap,
 * and clipped to what mmap can give: [the floor of addrspace.c, arch_user_top). EINVAL when the
 * size does not fit even in the unclipped window, ERANGE when it is the clipping (or page
 * alignment) that leaves too little.
 */
static int place_window(struct place *pl)
{
    const struct place_request *req = pl->req;
    const uintptr_t tlo = req->target_lo, thi = req->target_hi;
    const size_t reach = req->reach, size = req->size;
    const size_t below = reach + arch_origin_first, above = reach + arch_origin_last;

    if (thi < tlo || reach == 0 || reach > SIZE_MAX / 4 || thi - tlo > below + above ||
        size > below + above - (thi - tlo)) {
        errno = EINVAL;
        return -1;
    }
    const uintptr_t floor = addrspace_limits()->floor;
    uintptr_t lo = thi > floor + below ? thi - below : floor;
    uintptr_t hi = tlo < arch_user_top && arch_user_top - tlo > above ? tlo + above : arch_user_top;
    lo = align_up(lo, os_page_size);
    hi = align_down(hi, os_page_size);
    if (lo >= hi || hi - lo < size) {
        errno = ERANGE;
        return -1;
    }
    pl->lo = lo;
    pl->hi = hi;
    pl->last = hi - size;
    return 0;
}

/* The final word on a region: inside the window and, independently, every byte in reach. */
static bool place_fits(const struct place *pl, uintptr_t base)
{
    const struct place_request *req = pl->req;
    return base % os_page_size == 0 && base >= pl->lo && base <= pl->last &&
           reach_covers(base, base + req->size, req->target_lo, req->target_hi, req->reach);
}

static void place_exclude(struct place *pl, uintptr_t lo, uintptr_t hi)
{
    if (pl->nexcluded < PLACE_MAX_EXCLUDED && lo < hi)
        pl->excluded[pl->nexcluded++] = (struct place_range){lo, hi};
}

static bool place_is_excluded(const struct place *pl, uintptr_t base)
{
    for (unsigned i = 0; i < pl->nexcluded; i++)
        if (base < pl->excluded[i].hi && base + pl->req->size > pl->excluded[i].lo)
            return true;
    return false;
}

/* ---- The claim ---- */

enum place_outcome {
    PLACE_CLAIMED, /* *out is ours and in reach */
    PLACE_TAKEN,   /* EEXIST: a mapping is in the way, and a fresh map shows it */
    PLACE_REFUSED, /* refused for a reason a map may not show (see place_claim) */
    PLACE_FAILED   /* an error that no other spot would avoid: errno */
};

static enum place_outcome place_claim(struct place *pl, uintptr_t base, void **out)
{
    const size_t size = pl->req->size;
    bool noreplace = !atomic_load_explicit(&place_noreplace_ignored, memory_order_relaxed);
    pl->attempts++;
    void *p = os_reserve((void *)base, size, noreplace);
    if (p == NULL) {
        /* EEXIST: a mapping is there, usually one another thread made after our map was read;
         * the next scan sees it. ENOMEM on one spot (the kernel refusing a range the map shows
         * as free, or a map count limit) is worth another spot. Anything else (EPERM from a
         * security module, EAGAIN...) will not get better elsewhere. */
        if (errno == EEXIST)
            return PLACE_TAKEN;
        if (errno != ENOMEM)
            return PLACE_FAILED;
        pl->refused++;
        return PLACE_REFUSED;
    }

    /* A mapping somewhere else. With NOREPLACE honoured that cannot happen, so the flag was
     * ignored (kernel before 4.17, valgrind on an occupied spot, an emulator); with a plain hint
     * it means the spot was taken. A hint gives no reason, and the map may not show one
     * (valgrind refuses space it reserves without mapping it). */
    bool moved = p != (void *)base;
    if (moved && noreplace && !atomic_exchange(&place_noreplace_ignored, true))
        debug_log(
            "place: MAP_FIXED_NOREPLACE ignored (asked %#lx, got %p): plain hints from now on",
            (unsigned long)base, p);

    /* Whatever the kernel gave back is checked against the window before it is trusted. A
     * region that landed elsewhere may still happen to be in reach (and clear of the stack's
     * room): keep it then. Otherwise it is not ours to keep. */
    if (place_fits(pl, (uintptr_t)p) && !(moved && place_is_excluded(pl, (uintptr_t)p))) {
        *out = p;
        return PLACE_CLAIMED;
    }
    /* munmap of a whole mapping we just made cannot fail: there is nothing to split. */
    os_release(p, size);
    return PLACE_REFUSED;
}

/* ---- The scan ---- */

/* How far a region at base is from the targets: the distance between the centres. */
static uintptr_t place_distance(const struct place *pl, uintptr_t base)
{
    const struct place_request *req = pl->req;
    uintptr_t target = req->target_lo + (req->target_hi - req->target_lo) / 2;
    uintptr_t centre = base + req->size / 2;
    return centre > target ? centre - target : target - centre;
}

/* A free piece [lo, hi) of the window, outside every excluded spot: count its bases and let it
 * compete for the pick. */
static void place_consider(struct place *pl, uintptr_t lo, uintptr_t hi)
{
    const size_t size = pl->req->size;
    lo = align_up(lo, os_page_size);
    hi = align_down(hi, os_page_size);
    if (lo >= hi || hi - lo < size)
        return;
    pl->gaps_fitting++;
    uintptr_t last = hi - size;

    if (pl->nearest) {
        /* The base whose region is centred on the targets, clamped into this piece. */
        uintptr_t target = pl->req->target_lo + (pl->req->target_hi - pl->req->target_lo) / 2;
        uintptr_t ideal = target > size / 2 ? align_down(target - size / 2, os_page_size) : 0;
        uintptr_t base = ideal < lo ? lo : ideal > last ? last : ideal;
        uintptr_t distance = place_distance(pl, base);
        if (!pl->found || distance < pl->pick_distance) {
            pl->pick = base;
            pl->pick_distance = distance;
            pl->found = true;
        }
        return;
    }

    /* Reservoir sampling over bases: this piece replaces the pick with probability
     * bases / (bases seen so far), which leaves every fitting base of the window equally
     * likely after one pass, without storing the gaps. */
    uint64_t bases = (last - lo) / os_page_size + 1;
    pl->choices += bases;
    if (place_next(pl) % pl->choices < bases) {
        pl->pick =
            pl->narrow ? place_base_near_an_end(pl, lo, last) : place_random_base(pl, lo, last);
        pl->found = true;
    }
}

/* Cuts the excluded spots out of [lo, hi). Spots before index `from` are known not to overlap. */
static void place_consider_unexcluded(struct place *pl, uintptr_t lo, uintptr_t hi, unsigned from)
{
    for (unsigned i = from; i < pl->nexcluded; i++) {
        const struct place_range *x = &pl->excluded[i];
        if (x->hi <= lo || x->lo >= hi)
            continue;
        if (x->lo > lo)
            place_consider_unexcluded(pl, lo, x->lo, i + 1);
        if (x->hi < hi)
            place_consider_unexcluded(pl, x->hi, hi, i + 1);
        return;
    }
    place_consider(pl, lo, hi);
}

/* One pass over the gaps of a fresh map, from the bottom of the address space to the top of the
 * window (the rest of the file is never read). Returns 0 (pl->found tells whether anything
 * fits), or -1 + errno when the map cannot be read. */
static int place_scan(struct place *pl, struct meta *meta)
{
    struct maps maps;
    if (maps_open(&maps, meta) != 0)
        return -1;
    pl->gaps = pl->gaps_in_window = pl->gaps_fitting = 0;
    pl->choices = 0;
    pl->found = false;

    uintptr_t start, end;
    while (maps_next_gap(&maps, &start, &end)) {
        pl->gaps++;
        if (end <= pl->lo)
            continue;
        if (start >= pl->hi)
            break;
        pl->gaps_in_window++;
        place_consider_unexcluded(pl, start > pl->lo ? start : pl->lo, end < pl->hi ? end : pl->hi,
                                  0);
    }
    if (maps.error != 0) {
        int saved = maps.error;
        debug_log("place: reading /proc/self/maps failed (errno %d)", saved);
        maps_close(&maps);
        errno = saved;
        return -1;
    }
    if (pl->found)
        debug_log(
            "place: scan: %zu mappings read, %zu gaps, %zu in the window, %zu fit: picked %#lx",
            maps.count, pl->gaps, pl->gaps_in_window, pl->gaps_fitting, (unsigned long)pl->pick);
    else
        debug_log("place: scan: %zu mappings read, %zu gaps, %zu in the window, none fits",
                  maps.count, pl->gaps, pl->gaps_in_window);
    maps_close(&maps);
    return 0;
}

/* ---- The whole placement ---- */

static uint64_t place_clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The reservation with no target: anywhere the kernel likes, still PROT_NONE and NORESERVE. */
static void *place_anywhere(const struct place_request *req)
{
    void *p = os_reserve(NULL, req->size, false);
    if (p == NULL)
        debug_log("place: %zu bytes anywhere: mmap failed (errno %d)", req->size, errno);
    else
        debug_log("place: %zu bytes anywhere: [%p, %#lx)", req->size, p,
                  (unsigned long)((uintptr_t)p + req->size));
    return p;
}

/* A random base of the whole window, for a probe: near one of its ends when it is narrow. */
static uintptr_t place_probe_base(struct place *pl)
{
    return pl->narrow ? place_base_near_an_end(pl, pl->lo, pl->last)
                      : place_random_base(pl, pl->lo, pl->last);
}

/* The fast path. A refused probe is not remembered: the map was not read, so the obstacle may
 * well be a mapping the scan will see anyway, and the probe's spot may overlap a free gap that
 * must stay eligible. Nearest mode skips the probes: they would make the layout depend on luck. */
static enum place_outcome place_probe(struct place *pl, void **region)
{
    pl->how = "probe";
    for (unsigned i = 0; i < PLACE_PROBES && !pl->nearest; i++) {
        uintptr_t base = place_probe_base(pl);
        if (place_is_excluded(pl, base))
            continue;
        enum place_outcome outcome = place_claim(pl, base, region);
        if (outcome == PLACE_CLAIMED || outcome == PLACE_FAILED)
            return outcome;
    }
    return PLACE_TAKEN;
}

/* The slow path: scan, claim the pick, and scan again when someone else got there first. */
static enum place_outcome place_search(struct place *pl, struct meta *meta, void **region)
{
    pl->how = "scan";
    unsigned rounds = PLACE_ROUNDS;
    bool blind = false;
    for (unsigned round = 0; round < rounds; round++) {
        uintptr_t base;
        bool scanned = !blind && place_scan(pl, meta) == 0;
        if (scanned) {
            if (!pl->found)
                break;
            base = pl->pick;
        } else if (!blind && errno == ENOMEM) {
            /* No memory for the map's text: no memory for a cache either. */
            return PLACE_FAILED;
        } else {
            /* No readable /proc/self/maps (a chroot, a container without /proc): random probes
             * are all that is left, so more of them, anywhere in the window: the first ones found
             * its ends taken, and there are no gaps to keep whole that we could know of. */
            if (!blind)
                debug_log("place: cannot read /proc/self/maps (errno %d): probing blind", errno);
            blind = true;
            pl->how = "blind probe";
            rounds = PLACE_BLIND_ROUNDS;
            base = place_random_base(pl, pl->lo, pl->last);
            if (place_is_excluded(pl, base))
                continue;
        }
        enum place_outcome outcome = place_claim(pl, base, region);
        if (outcome == PLACE_CLAIMED || outcome == PLACE_FAILED)
            return outcome;
        /* The map showed this spot free and it was refused anyway: the next scan would pick it
         * again (always, in nearest mode), so it is cut out of the gaps from now on. What refused
         * it may be larger than the map shows (valgrind's own reservations): a base near the end
         * of a gap would now be next to it, so the rest of the search takes any fitting base. */
        if (outcome == PLACE_REFUSED && scanned) {
            place_exclude(pl, base, base + pl->req->size);
            pl->narrow = false;
        }
    }
    errno = ENOMEM;
    return PLACE_FAILED;
}

void *place_reserve(const struct place_request *req, struct meta *meta)
{
    os_init();
    const struct addrspace_limits *limits = addrspace_limits();
    if (req->size == 0 || req->size % os_page_size != 0) {
        errno = EINVAL;
        return NULL;
    }
    if (req->target_hi == req->target_lo)
        return place_anywhere(req);

    struct place pl = {.req = req, .nearest = limits->nearest};
    uint64_t started = debug_enabled() ? place_clock_ns() : 0;
    if (place_window(&pl) != 0) {
        debug_log("place: %zu bytes cannot reach [%#lx, %#lx) with reach %#zx: %s", req->size,
                  (unsigned long)req->target_lo, (unsigned long)req->target_hi, req->reach,
                  errno == EINVAL ? "larger than the window (EINVAL)"
                                  : "the window clipped to user space is too small (ERANGE)");
        return NULL;
    }
    pl.narrow = pl.hi - pl.lo < PLACE_NARROW_WINDOW;
    debug_log("place: %zu bytes near [%#lx, %#lx), reach %#zx: window [%#lx, %#lx)%s", req->size,
              (unsigned long)req->target_lo, (unsigned long)req->target_hi, req->reach,
              (unsigned long)pl.lo, (unsigned long)pl.hi,
              pl.nearest  ? ", nearest base (CODE_CACHE_NO_RANDOM)"
              : pl.narrow ? ", narrow: a random base near an end"
                          : "");
    place_seed(&pl);
    place_exclude(&pl, limits->stack_lo, limits->stack_hi);

    void *region = NULL;
    enum place_outcome outcome = place_probe(&pl, &region);
    if (outcome != PLACE_CLAIMED && outcome != PLACE_FAILED)
        outcome = place_search(&pl, meta, &region);

    if (outcome == PLACE_CLAIMED) {
        if (debug_enabled())
            debug_log("place: claimed [%p, %#lx) by %s after %u attempt(s)%s in %lu us", region,
                      (unsigned long)((uintptr_t)region + req->size), pl.how, pl.attempts,
                      atomic_load(&place_noreplace_ignored) ? " (plain hints)" : "",
                      (unsigned long)((place_clock_ns() - started) / 1000));
        return region;
    }
    int saved = errno;
    /* ENOMEM from mmap on a spot the map shows free is the kernel refusing memory, not a lack of
     * gaps: the address-space limit (ulimit -v), the map count limit, or overcommit. */
    debug_log("place: failed after %u attempt(s) (%s): errno %d%s", pl.attempts, pl.how, saved,
              saved != ENOMEM  ? ""
              : pl.refused > 0 ? ", the kernel refused free gaps with ENOMEM (address-space "
                                 "limit RLIMIT_AS / ulimit -v, vm.max_map_count, or memory)"
                               : ", no free gap within reach");
    errno = saved;
    return NULL;
}

/*
 * The RW view of a dual-mapped cache: anywhere but near the code. Its address is what an attacker
 * with a write primitive needs, so it is not derived from the code's (ASLR places consecutive
 * mmaps next to each other): a random hint in the middle of the address space, away from the
 * stack's room, checked to be at least a page away from the code's reservation. A hint is only
 * a hint, so the result is verified; a few tries, then the kernel's own choice if that is not
 * adjacent either.
 *
 * A rejected mapping stays mapped until the end: where hints are not honoured (ThreadSanitizer
 * drops every hint outside its application ranges; a crowded address space does the same), each
 * try gets the kernel's top-down choice, which, had the rejected one been unmapped at once, would
 * be the same spot next to the code every time (tests/rw_view_adjacent.c). Kept, it pushes the
 * next choice below itself.
 */
void *place_random(size_t size, uintptr_t avoid_lo, uintptr_t avoid_hi)
{
    os_init();
    const struct addrspace_limits *limits = addrspace_limits();
    const uintptr_t page = os_page_size, span_lo = (uintptr_t)1 << 40;
    const uintptr_t span_hi =
        arch_user_top > 2 * span_lo + size ? arch_user_top - span_lo - size : span_lo;
    uint64_t rng = os_random();
    enum { ATTEMPTS = 8 };
    void *rejected[ATTEMPTS], *found = NULL;
    int nrejected = 0;
    for (int attempt = 0; attempt < ATTEMPTS; attempt++) {
        void *hint = NULL;
        if (attempt < ATTEMPTS - 1 && span_hi > span_lo) {
            rng = rng * 6364136223846793005u + 1442695040888963407u; /* LCG: a hash, wraps */
            hint = (void *)align_down(span_lo + (uintptr_t)(rng >> 16) % (span_hi - span_lo), page);
        }
        void *p = os_reserve(hint, size, false);
        if (p == NULL)
            break;
        uintptr_t lo = (uintptr_t)p, hi = lo + size;
        bool near_code = lo < avoid_hi + page && hi + page > avoid_lo;
        bool in_stack = lo < limits->stack_hi && hi > limits->stack_lo;
        if (!near_code && !in_stack) {
            found = p;
            break;
        }
        rejected[nrejected++] = p;
    }
    /* errno: os_reserve's, or ENOMEM when every try was rejected; the releases keep it. */
    int saved = found == NULL && nrejected == ATTEMPTS ? ENOMEM : errno;
    while (nrejected > 0)
        os_release(rejected[--nrejected], size);
    errno = saved;
    return found;
}
