/*
 * Which functions of a program run: preloaded into it (LD_PRELOAD) by
 * `scripts/bench --symbol-order` (benches/compare.rs) to list the functions
 * ripcord's daemon runs, which the release link then places together.
 *
 * TRACE_FUNCS names a file of function entry addresses (hex, as `nm` gives
 * them for the position-independent executable). Before the program starts,
 * each entry's first byte becomes a breakpoint (int3). The first time a
 * function is entered, the SIGTRAP handler records it, puts the byte back
 * and lets the function run: every function that runs is seen, once, at no
 * cost afterwards. The hit addresses are written to TRACE_OUT every second
 * and when the program exits.
 *
 * A tool for a maintainer's machine, not part of ripcord.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

static unsigned long base;   /* where the executable's vaddr 0 is mapped */
static unsigned long *entry; /* sorted entry addresses */
static unsigned char *orig;  /* each entry's first byte */
static volatile unsigned char *hit;
static size_t n;

static long find(unsigned long a) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t m = lo + (hi - lo) / 2;
        if (entry[m] < a)
            lo = m + 1;
        else
            hi = m;
    }
    return lo < n && entry[lo] == a ? (long)lo : -1;
}

static void on_trap(int sig, siginfo_t *si, void *vctx) {
    (void)sig;
    (void)si;
    ucontext_t *uc = vctx;
    unsigned long at = (unsigned long)uc->uc_mcontext.gregs[REG_RIP] - 1;
    long i = find(at - base);
    if (i < 0) { /* not ours: what a SIGTRAP would have done */
        signal(SIGTRAP, SIG_DFL);
        raise(SIGTRAP);
        return;
    }
    /* Another thread may have put the byte back already. */
    unsigned char *p = (unsigned char *)at;
    if (*p == 0xCC)
        *p = orig[i];
    hit[i] = 1;
    uc->uc_mcontext.gregs[REG_RIP] = (greg_t)at;
}

static void dump(void) {
    const char *out = getenv("TRACE_OUT");
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", out);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return;
    for (size_t i = 0; i < n; i++)
        if (hit[i])
            fprintf(f, "%lx\n", entry[i]);
    if (fclose(f) == 0)
        rename(tmp, out);
}

static void *dumper(void *unused) {
    (void)unused;
    for (;;) {
        sleep(1);
        dump();
    }
    return 0;
}

static int by_address(const void *a, const void *b) {
    unsigned long x = *(const unsigned long *)a, y = *(const unsigned long *)b;
    return x < y ? -1 : x > y;
}

__attribute__((constructor)) static void start(void) {
    const char *list = getenv("TRACE_FUNCS");
    if (!list || !getenv("TRACE_OUT"))
        return;
    char exe[4096];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0)
        return;
    exe[len] = 0;
    /* Only the traced program itself, not what it runs (`cc`, steps). */
    unsetenv("LD_PRELOAD");

    FILE *maps = fopen("/proc/self/maps", "r");
    if (!maps)
        return;
    char line[8192];
    unsigned long text_lo = 0, text_hi = 0;
    while (fgets(line, sizeof line, maps)) {
        unsigned long lo, hi, off;
        char perms[8], path[4096] = "";
        if (sscanf(line, "%lx-%lx %7s %lx %*s %*s %4095s", &lo, &hi, perms, &off, path) < 4 ||
            strcmp(path, exe) != 0)
            continue;
        if (!base && off == 0)
            base = lo; /* the first segment: file offset 0 at vaddr 0 */
        if (perms[2] == 'x') {
            text_lo = lo;
            text_hi = hi;
        }
    }
    fclose(maps);
    if (!base || !text_lo) {
        fprintf(stderr, "trace_functions: %s's text not found\n", exe);
        return;
    }

    FILE *f = fopen(list, "r");
    if (!f) {
        perror(list);
        return;
    }
    size_t cap = 1 << 15;
    entry = malloc(cap * sizeof *entry);
    unsigned long a;
    while (entry && fscanf(f, "%lx", &a) == 1) {
        if (base + a < text_lo || base + a >= text_hi)
            continue;
        if (n == cap)
            entry = realloc(entry, (cap *= 2) * sizeof *entry);
        if (entry)
            entry[n++] = a;
    }
    fclose(f);
    if (!entry)
        return;
    qsort(entry, n, sizeof *entry, by_address);
    size_t kept = 0; /* one breakpoint per address (aliases share one) */
    for (size_t i = 0; i < n; i++)
        if (kept == 0 || entry[i] != entry[kept - 1])
            entry[kept++] = entry[i];
    n = kept;
    orig = malloc(n);
    hit = calloc(n, 1);
    if (!orig || !hit ||
        mprotect((void *)text_lo, text_hi - text_lo, PROT_READ | PROT_WRITE | PROT_EXEC) != 0) {
        perror("trace_functions");
        return;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_trap;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGTRAP, &sa, 0);
    for (size_t i = 0; i < n; i++) {
        unsigned char *p = (unsigned char *)(base + entry[i]);
        orig[i] = *p;
        *p = 0xCC;
    }
    atexit(dump);
    pthread_t t;
    pthread_create(&t, 0, dumper, 0);
}
