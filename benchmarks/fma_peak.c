/* One core's float32 FMA peak: 24 independent chains of 512-bit (or 256-bit) vfmadd, enough
 * to cover two FMA ports x 4 cycles of latency. Prints GFLOP/s (2 flops per lane per FMA).
 * Built and run by benchmarks/bench_conv.py:  cc -O2 -march=native fma_peak.c */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#if defined(__AVX512F__)
typedef __m512 V;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define SUM(v) _mm512_reduce_add_ps(v)
#else
typedef __m256 V;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
static float SUM(__m256 v) { float t[8]; _mm256_storeu_ps(t, v); float s = 0; for (int i = 0; i < 8; i++) s += t[i]; return s; }
#endif
#define CH 24

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);   /* CPU time: other processes on the core do not count */
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(void) {
    V acc[CH], a = SET1(0.999999f), b = SET1(1e-7f);
    for (int i = 0; i < CH; i++) acc[i] = SET1((float)i);
    double best = 0;
    for (int rep = 0; rep < 7; rep++) {
        long iters = 20000000;
        double t0 = now();
        for (long it = 0; it < iters; it++) {
#pragma GCC unroll 24
            for (int i = 0; i < CH; i++) acc[i] = FMA(acc[i], a, b);
            __asm__ volatile("" : "+x"(a));
        }
        double dt = now() - t0, gf = 2.0 * LANES * CH * iters / dt / 1e9;
        if (gf > best) best = gf;
    }
    V s = acc[0];
    for (int i = 1; i < CH; i++) s = ADD(s, acc[i]);
    printf("%.1f %g\n", best, (double)SUM(s));
    return 0;
}
