/* CPU-feature dispatch and library state (threads, status strings). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE   /* syscall() for the futex of fastnn_team_barrier */
#endif
#include <pthread.h>
#ifdef __linux__
#include <sys/mman.h>
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sched.h>
#include <string.h>
#include <time.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#include "ref/common.h"
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) || defined(_M_X64)
#define FASTNN_X86 1
#else
#define FASTNN_X86 0
#endif

static const fastnn_kernel_table table_generic = {"generic", {0}, {0}};
static fastnn_kernel_table tables[3];
static int ntables = 0;
static const fastnn_kernel_table *current = NULL;
static char available[64];

/* ---- cache blocking: from the caches the CPU reports, or FASTNN_GEMM_BLOCKING ----
 * Each table's MC and KC were tuned for one pair of cache sizes: the avx2 values are BLIS's
 * haswell ones (32 KiB L1d, 256 KiB L2), the avx512 ones were tuned on AMD Zen 4 (32 KiB L1d,
 * 1 MiB L2). Following BLIS's analytical model (Low et al., "Analytical modeling is enough
 * for high-performance BLIS", ACM TOMS 43(2), 2016), KC sizes the B micro-panel (KC x NR) to a
 * share of L1d and MC the A block (MC x KC) to a share of L2, so on a core with smaller caches
 * than the tuned ones each shrinks with its cache: KC by L1d / tuned L1d (a multiple of 8,
 * within [128, 1024]), then MC so that MC x KC shrinks by L2 / tuned L2, with the A block at
 * most half of L2 (a multiple of MR). Larger caches keep the tuned values. NC (the B panel)
 * stays in L3 unless L2 is 1 MiB or more (fit_nc). FASTNN_GEMM_BLOCKING="MC,KC,NC" sets the
 * float32 values of every table instead (MC and NC rounded to the micro-tile), for tuning. */
static long cache_bytes(int level) {
#ifdef _SC_LEVEL1_DCACHE_SIZE
    long v = sysconf(level == 1 ? _SC_LEVEL1_DCACHE_SIZE : _SC_LEVEL2_CACHE_SIZE);
    if (v > 0) return v;
#endif
    (void)level;
    return 0;
}

static int round_to(long v, int q, long lo, long hi) {
    if (v < lo) v = lo;
    if (v > hi) v = hi;
    v = v / q * q;
    return (int)(v < q ? q : v);
}

static void scale_cfg(int *mc, int *kc, int mr, int elem, long l1, long l2, long tl1,
                      long tl2) {
    /* Only ever smaller than tuned: on a core with larger caches (an Intel Xeon with 48 KiB
     * L1d and 2 MiB L2) growing KC and MC was within the noise for GEMMs (better for 2048^2 on
     * avx2) but measured worse for the convolution's implicit GEMM; see BENCHMARKS.md. */
    double a_block = (double)*mc * *kc;               /* elements of the tuned A block */
    if (l1 > 0 && l1 < tl1) *kc = round_to((long)*kc * l1 / tl1, 8, 128, 1024);
    if (l2 > 0 && l2 < tl2) {
        a_block *= (double)l2 / tl2;
        if (a_block * elem > l2 / 2) a_block = (double)(l2 / 2) / elem;
    }
    int mc_new = round_to((long)(a_block / *kc), mr, mr, 4096);
    if (mc_new < *mc) *mc = mc_new;
}

/* NC on a core with a large L2 (1 MiB or more): the column block of packed B that one k block
 * covers (KC x NC) kept in L2 beside the A block, at most 3/4 of L2 for both, instead of
 * streaming from L3 for every MR-row panel of A (the avx512 table's B micro-panel, 384 x 32
 * floats, fills L1 by itself). On the 2 MiB-L2 Xeon of BENCHMARKS.md this took 2048^3 from
 * 0.77-0.84x OpenBLAS to 0.9-0.96x. Smaller L2s (Zen 3's 512 KiB) keep the tuned NC: there
 * the B block would be a few hundred columns and A would be packed again for each. */
static void fit_nc(int *nc, int mc, int kc, int nr, int elem, long l2) {
    if (l2 < (1L << 20)) return;
    long cols = (l2 / 4 * 3 - (long)mc * kc * elem) / ((long)kc * elem);
    int v = round_to(cols, nr, 8L * nr, *nc);
    if (v < *nc) *nc = v;
}

static void fit_blocking(fastnn_kernel_table *t) {
    long tl1 = 32768, tl2;
    if (strcmp(t->name, "avx2") == 0) tl2 = 262144;
    else if (strcmp(t->name, "avx512") == 0) tl2 = 1048576;
    else return;                                      /* generic: no cache-tuned kernel */
    long l2 = cache_bytes(2);
    t->s.l2 = t->d.l2 = l2 > 0 ? l2 : 0;
    const char *env = getenv("FASTNN_GEMM_BLOCKING");
    int mc, kc, nc;
    if (env && sscanf(env, "%d,%d,%d", &mc, &kc, &nc) == 3 && mc > 0 && kc > 0 && nc > 0 &&
        mc <= 65536 && kc <= 65536 && nc <= 1048576) {
        t->s.mc = round_to(mc, t->s.mr, t->s.mr, 65536);
        t->s.kc = kc;
        t->s.nc = round_to(nc, t->s.nr, t->s.nr, 1048576);
        return;
    }
    long l1 = cache_bytes(1);
    /* The avx2 table's MC (BLIS's Haswell value, for a 256 KiB L2) doubles on an L2 of
     * 512 KiB or more: an A block of 288 x 256 floats, 56 % of a Zen 3 L2 as 144 x 256 is of
     * Haswell's, halves the passes over packed B. Measured on Zen 3 (21 interleaved pairs in
     * one process, BENCHMARKS.md): sgemm 1024^2 and 2048^2 and 256x1024x1024 3-5 % faster,
     * the convolution's implicit GEMM unchanged; 432 and 576 no better than 288. The avx512
     * table, tuned on a 1 MiB L2, keeps its MC (larger caches measured worse there for the
     * convolutions, see scale_cfg). */
    if (strcmp(t->name, "avx2") == 0 && l2 >= 2 * tl2) t->s.mc *= 2;
    scale_cfg(&t->s.mc, &t->s.kc, t->s.mr, 4, l1, l2, tl1, tl2);
    scale_cfg(&t->d.mc, &t->d.kc, t->d.mr, 8, l1, l2, tl1, tl2);
    fit_nc(&t->s.nc, t->s.mc, t->s.kc, t->s.nr, 4, l2);
    fit_nc(&t->d.nc, t->d.mc, t->d.kc, t->d.nr, 8, l2);
}

void fastnn_gemm_blocking(int out[10]) {
    const fastnn_kernel_table *t = fastnn_table();
    int v[10] = {t->s.mr, t->s.nr, t->s.mc, t->s.kc, t->s.nc,
                 t->d.mr, t->d.nr, t->d.mc, t->d.kc, t->d.nc};
    memcpy(out, v, sizeof v);
}

void fastnn_cache_sizes(long out[2]) {
    out[0] = cache_bytes(1);
    out[1] = cache_bytes(2);
}

/* Build the tables once: each starts from the generic one and overrides what its ISA has. */
static void init_tables(void) {
    if (ntables) return;
    fastnn_kernel_table t = table_generic;
    t.s = fastnn_sgemm_generic;
    t.d = fastnn_dgemm_generic;
    tables[ntables++] = t;
    strcpy(available, "generic");
#if FASTNN_X86 && defined(FASTNN_HAVE_AVX2)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        t.name = "avx2";
        t.s = fastnn_sgemm_avx2;
        t.d = fastnn_dgemm_avx2;
        tables[ntables++] = t;
        strcat(available, ",avx2");
    }
#endif
#if FASTNN_X86 && defined(FASTNN_HAVE_AVX512)
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("fma")) {
        t.name = "avx512";
        t.s = fastnn_sgemm_avx512;
        t.d = fastnn_dgemm_avx512;
        tables[ntables++] = t;
        strcat(available, ",avx512");
    }
#endif
    for (int i = 0; i < ntables; i++) fit_blocking(&tables[i]);
    current = &tables[ntables - 1];
}

const fastnn_kernel_table *fastnn_table(void) {
    if (!current) init_tables();
    return current;
}

const char *fastnn_arch(void) { return fastnn_table()->name; }

const char *fastnn_available_archs(void) {
    init_tables();
    return available;
}

fastnn_status fastnn_set_arch(const char *name) {
    init_tables();
    if (!name) return FASTNN_ENULL;
    for (int i = 0; i < ntables; i++)
        if (strcmp(tables[i].name, name) == 0) {
            current = &tables[i];
            return FASTNN_OK;
        }
    return FASTNN_EARCH;
}

/* ---- per-thread scratch buffers: no allocation, no page faults per call ----
 * Each thread owns FASTNN_SCRATCH_SLOTS buffers, one per user that may hold its buffer while
 * calling another (a convolution's image chunk while the GEMM packs its panels). */
typedef struct { void *p[FASTNN_SCRATCH_SLOTS]; size_t size[FASTNN_SCRATCH_SLOTS]; } scratch_t;
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *v) {
    scratch_t *s = v;
    if (s)
        for (int i = 0; i < FASTNN_SCRATCH_SLOTS; i++) free(s->p[i]);
    free(s);
}

static void scratch_init(void) { pthread_key_create(&scratch_key, scratch_free); }

void *fastnn_scratch_slot(int slot, size_t bytes) {
    if (slot < 0 || slot >= FASTNN_SCRATCH_SLOTS) return NULL;
    pthread_once(&scratch_once, scratch_init);
    scratch_t *s = pthread_getspecific(scratch_key);
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s || pthread_setspecific(scratch_key, s) != 0) {
            free(s);
            return NULL;
        }
    }
    if (s->size[slot] < bytes) {
        if (bytes > SIZE_MAX - 63) return NULL;
        size_t size = (bytes + 63) / 64 * 64;
        void *p = NULL;
#ifdef MADV_HUGEPAGE
        /* A large scratch (the packed B of a big GEMM, megabytes read panel after panel) on
         * 2 MiB pages: with 4 KiB pages its panels cost a TLB miss every 4 KiB */
        if (size >= ((size_t)1 << 21)) {
            size = (size + ((size_t)1 << 21) - 1) & ~(((size_t)1 << 21) - 1);
            p = aligned_alloc((size_t)1 << 21, size);
            if (p) madvise(p, size, MADV_HUGEPAGE);
        }
#endif
        if (!p) p = aligned_alloc(64, size);
        if (!p) return NULL;
        free(s->p[slot]);
        s->p[slot] = p;
        s->size[slot] = size;
    }
    return s->p[slot];
}

void *fastnn_scratch(size_t bytes) { return fastnn_scratch_slot(FASTNN_SCRATCH_GEMM, bytes); }

/* ---- threads ---- */
static int nthreads = 0;   /* 0: OpenMP's default */

int fastnn_openmp_enabled(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

void fastnn_set_num_threads(int n) { nthreads = n > 0 ? n : 0; }

int fastnn_get_num_threads(void) {
#ifdef _OPENMP
    return nthreads > 0 ? nthreads : omp_get_max_threads();
#else
    return 1;
#endif
}

/* About 12 M operations (~120 us on one core) per thread before another thread pays for
 * its wake-up (threads sleep while they wait, see OMP_WAIT_POLICY in fastnn/__init__.py).
 * Inside a team the others are already awake (they spin at its barrier): 256 K (~3 us). */
int fastnn_threads_for(double work) {
    fastnn_team *team = fastnn_cur_team;
    int n = team ? team->nthreads : fastnn_get_num_threads();
    double per = team ? 262144.0 : 12582912.0;
    if (work < per * 2) return 1;
    int want = (int)(work / per);
    return want < n ? want : n;
}

/* ---- teams (see ref/common.h) ---- */
_Thread_local fastnn_team *fastnn_cur_team = NULL;

/* Spins before a waiting thread sleeps: ~30-60 us, the gap between two kernels of a step. */
#define FASTNN_TEAM_SPIN 2048

void fastnn_team_init(fastnn_team *t, int nthreads) {
    t->nthreads = nthreads;
    atomic_init(&t->gen, 0);
    atomic_init(&t->arrived, 0);
    atomic_init(&t->sleepers, 0);
    atomic_init(&t->next, 0);
    t->ptr[0] = t->ptr[1] = NULL;
    t->waited = 0;
}

static void team_sleep(fastnn_team *t, unsigned g) {
#ifdef __linux__
    syscall(SYS_futex, (void *)&t->gen, FUTEX_WAIT_PRIVATE, g, NULL, NULL, 0);
#else
    (void)t, (void)g;
    sched_yield();
#endif
}

static void team_wake(fastnn_team *t) {
#ifdef __linux__
    syscall(SYS_futex, (void *)&t->gen, FUTEX_WAKE_PRIVATE, 0x7fffffff, NULL, NULL, 0);
#else
    (void)t;
#endif
}

static inline void cpu_relax(void) {
#if FASTNN_X86
    __builtin_ia32_pause();
#endif
}

double fastnn_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void team_wait(fastnn_team *t, unsigned g) {
    for (int i = 0; i < FASTNN_TEAM_SPIN; i++) {
        if (atomic_load_explicit(&t->gen, memory_order_acquire) != g) return;
        cpu_relax();
    }
    /* Announce the sleep before the last check: the releaser either sees the sleeper or the
     * sleeper sees the new generation (both seq_cst); the futex rechecks the word itself. */
    atomic_fetch_add_explicit(&t->sleepers, 1, memory_order_seq_cst);
    while (atomic_load_explicit(&t->gen, memory_order_seq_cst) == g) team_sleep(t, g);
    atomic_fetch_sub_explicit(&t->sleepers, 1, memory_order_relaxed);
}

unsigned fastnn_team_barrier(fastnn_team *t) {
    unsigned g = atomic_load_explicit(&t->gen, memory_order_acquire);
    if (t->nthreads <= 1) return g;
    if (atomic_fetch_add_explicit(&t->arrived, 1, memory_order_acq_rel) == t->nthreads - 1) {
        atomic_store_explicit(&t->arrived, 0, memory_order_relaxed);
        atomic_store_explicit(&t->gen, g + 1, memory_order_seq_cst);   /* releases the others */
        if (atomic_load_explicit(&t->sleepers, memory_order_seq_cst) > 0) team_wake(t);
        return g;
    }
    if (fastnn_thread_id() == 0) {   /* thread 0 keeps the time it waited for the others */
        double t0 = fastnn_now();
        team_wait(t, g);
        t->waited += fastnn_now() - t0;
    } else {
        team_wait(t, g);
    }
    return g;
}

/* Thread 0 writes slot g & 1 before barrier g; the others read it right after. Slot g & 1 is
 * next written before barrier g + 2, which no thread passes before reading it. */
void *fastnn_team_share_ptr(fastnn_team *t, void *p) {
    if (!t) return p;
    if (fastnn_thread_id() == 0) t->ptr[atomic_load_explicit(&t->gen, memory_order_relaxed) & 1] = p;
    return t->ptr[fastnn_team_barrier(t) & 1];
}

fastnn_status fastnn_team_share(fastnn_team *t, fastnn_status st) {
    return (fastnn_status)(intptr_t)fastnn_team_share_ptr(t, (void *)(intptr_t)st);
}

const char *fastnn_status_string(fastnn_status s) {
    switch (s) {
    case FASTNN_OK: return "ok";
    case FASTNN_EINVAL: return "invalid argument";
    case FASTNN_ENULL: return "null pointer";
    case FASTNN_ENOMEM: return "out of memory";
    case FASTNN_ELABEL: return "label out of range";
    case FASTNN_EARCH: return "kernel table not available";
    case FASTNN_ENONFINITE: return "the loss is not finite (NaN or infinity)";
    case FASTNN_EIO: return "input/output error";
    case FASTNN_EFORMAT: return "corrupt or foreign file";
    case FASTNN_EUNSUPPORTED: return "not supported";
    default: return "unknown status";
    }
}
