/* CPU-feature dispatch and library state (threads, status strings). */
#include <pthread.h>
#include <string.h>
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

/* ---- per-thread scratch (GEMM packing buffers): no allocation, no page faults per call ---- */
typedef struct { void *p; size_t size; } scratch_t;
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *s) {
    if (s) free(((scratch_t *)s)->p);
    free(s);
}

static void scratch_init(void) { pthread_key_create(&scratch_key, scratch_free); }

void *fastnn_scratch(size_t bytes) {
    pthread_once(&scratch_once, scratch_init);
    scratch_t *s = pthread_getspecific(scratch_key);
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s || pthread_setspecific(scratch_key, s) != 0) {
            free(s);
            return NULL;
        }
    }
    if (s->size < bytes) {
        size_t size = (bytes + 63) / 64 * 64;
        void *p = aligned_alloc(64, size);
        if (!p) return NULL;
        free(s->p);
        s->p = p;
        s->size = size;
    }
    return s->p;
}

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
 * its wake-up (threads sleep while they wait, see OMP_WAIT_POLICY in fastnn/__init__.py). */
int fastnn_threads_for(double work) {
    int n = fastnn_get_num_threads();
    double per = 12582912.0;
    if (work < per * 2) return 1;
    int want = (int)(work / per);
    return want < n ? want : n;
}

const char *fastnn_status_string(fastnn_status s) {
    switch (s) {
    case FASTNN_OK: return "ok";
    case FASTNN_EINVAL: return "invalid argument";
    case FASTNN_ENULL: return "null pointer";
    case FASTNN_ENOMEM: return "out of memory";
    case FASTNN_ELABEL: return "label out of range";
    case FASTNN_EARCH: return "kernel table not available";
    default: return "unknown status";
    }
}
