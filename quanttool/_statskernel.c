/* One pass of TensorStats.update (quanttool/stats.py) over a contiguous float32 array, called through ctypes.

   qt_fold(x, n, bins, range_io, hist, moments, scratch, scratch_bytes) -> QT_OK (0); QT_NONFINITE (1) if x
   holds a NaN or an Inf; QT_BADARG (2) if bins is outside 1..QT_MAX_BINS, n < 0, or scratch is smaller than
   qt_scratch_bytes(bins). On any code but QT_OK the outputs are undefined.
   scratch: the caller's work area (about 80 KB for 2048 bins; stats.py keeps one per thread), so nothing big
   lives on the stack (a worker thread's may be 64 KB: musl, threading.stack_size) and nothing is allocated
   per call.
   range_io: R on entry (0 = none yet); on return the smallest power of two >= R and >= max |x|.
   hist: 2 * (bins + 1) int64, zeroed by the caller; gets pos bins 0..bins, then neg bins 0..bins, at the
         returned R. Bin k holds floor(|x| * bins / R) == k; bin `bins` is |x| == R exactly (the caller folds
         it into the top bin and remembers it as the edge count).
   moments: out lo, hi, zeros, sum, sum of x*x, sum of |x|; all in float64, x*x computed in float64 (exact).

   Values are read in cache-sized blocks: the min/max of a block is found first, and if it exceeds R, R
   doubles and the histogram so far is merged pairwise (bin k -> k/2, exact because bins / R is a power of two),
   then the block is binned while it is still in cache. The result is the histogram a single pass at the final
   R would give. The sums use 8 independent accumulators so they need no -ffast-math to run in parallel. */

#include <math.h>
#include <stdint.h>
#include <string.h>

enum { QT_OK = 0, QT_NONFINITE = 1, QT_BADARG = 2 };
#define QT_MAX_BINS 2048

#define BLOCK 4096
#define LANES 4  /* interleaved copies of the histogram: runs of equal bins would otherwise serialise */

/* GCC/clang vector extensions: portable SIMD (plain SSE2 on a baseline x86-64 build, NEON on arm64). */
/* On x86-64 with glibc, also compile an AVX2 copy of qt_fold and pick it at load time (about 2x faster: the
   float64 moments then take one instruction per 4 values); other targets get the baseline build only. */
#if defined(__x86_64__) && defined(__GLIBC__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define DISPATCH __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef DISPATCH
#define DISPATCH
#endif
#define INLINE static inline __attribute__((always_inline))

typedef float f4 __attribute__((vector_size(16)));
typedef int32_t i4 __attribute__((vector_size(16)));
typedef double d4 __attribute__((vector_size(32)));

INLINE f4 load4(const float *p)
{
    f4 v;
    memcpy(&v, p, sizeof v);
    return v;
}

INLINE f4 select4(i4 mask, f4 a, f4 b)
{
    return (f4)((mask & (i4)a) | (~mask & (i4)b));
}

static void shift_bins(uint32_t *lane, int bins, int shift)
{
    /* Merge 2**shift adjacent bins: bin k -> k >> shift, for both signs. In place, lowest bin first. */
    int center = bins + 1;
    for (int k = 0; k <= bins; k++) {
        int to = shift >= 31 ? 0 : k >> shift;
        uint32_t p = lane[center + 1 + k], q = lane[center - 1 - k];
        lane[center + 1 + k] = 0;
        lane[center - 1 - k] = 0;
        lane[center + 1 + to] += p;
        lane[center - 1 - to] += q;
    }
}

static double power_of_two_at_least(double value)
{
    int exponent;
    double mantissa = frexp(value, &exponent);
    return mantissa == 0.5 ? ldexp(1.0, exponent - 1) : ldexp(1.0, exponent);
}

static void flush(uint32_t *lanes, int slots, int bins, int64_t *hist)
{
    int center = bins + 1;
    for (int l = 0; l < LANES; l++) {
        uint32_t *lane = lanes + (size_t)l * slots;
        for (int k = 0; k <= bins; k++) {
            hist[k] += lane[center + 1 + k];
            hist[bins + 1 + k] += lane[center - 1 - k];
        }
    }
    memset(lanes, 0, sizeof(uint32_t) * (size_t)LANES * slots);
}

/* Min and max of one block; 1 if it holds a NaN (an Inf shows up in the min or max). */
INLINE int block_minmax(const float *p, int m, float *vmin, float *vmax)
{
    const f4 inf = {INFINITY, INFINITY, INFINITY, INFINITY};
    f4 lo0 = inf, lo1 = inf, hi0 = -inf, hi1 = -inf;
    i4 nan = {0, 0, 0, 0};
    int i = 0;
    for (; i + 8 <= m; i += 8) {
        f4 a = load4(p + i), b = load4(p + i + 4);
        lo0 = select4(a < lo0, a, lo0);
        lo1 = select4(b < lo1, b, lo1);
        hi0 = select4(a > hi0, a, hi0);
        hi1 = select4(b > hi1, b, hi1);
        nan |= (a != a) | (b != b);
    }
    float lo = INFINITY, hi = -INFINITY;
    int bad = 0;
    for (int j = 0; j < 4; j++) {
        lo = fminf(lo, fminf(lo0[j], lo1[j]));
        hi = fmaxf(hi, fmaxf(hi0[j], hi1[j]));
        bad |= nan[j];
    }
    for (; i < m; i++) {
        float v = p[i];
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
        bad |= v != v;
    }
    *vmin = lo;
    *vmax = hi;
    return bad != 0;
}

/* Moments of one block into acc (sum, sum, sq, sq, abs, abs) and the lane slot of every value into index. */
INLINE void block_bins(const float *p, int m, double scale, int center, int slots, int32_t *index, d4 *acc)
{
    typedef int64_t l4 __attribute__((vector_size(32)));
    const l4 nosign = {INT64_MAX, INT64_MAX, INT64_MAX, INT64_MAX};
    const i4 base = {center, center + slots, center + 2 * slots, center + 3 * slots};  /* LANES == 4 */
    const f4 zero = {0, 0, 0, 0};
    const float f = (float)scale;
    const f4 fs = {f, f, f, f};
    d4 s0 = acc[0], s1 = acc[1], q0 = acc[2], q1 = acc[3], a0 = acc[4], a1 = acc[5];
    /* scale as a float32 is exact unless R is tiny (scale above float range) or beyond float range itself;
       the scalar float64 loop below then takes the whole block. */
    const int vector = scale <= 0x1p127 && scale >= 0x1p-126;
    int i = 0;
    for (; vector && i + 8 <= m; i += 8) {
        f4 va = load4(p + i), vb = load4(p + i + 4);
        d4 da = __builtin_convertvector(va, d4), db = __builtin_convertvector(vb, d4);
        s0 += da;
        s1 += db;
        q0 += da * da;  /* exact: a float32 squared fits a float64 */
        q1 += db * db;
        a0 += (d4)((l4)da & nosign);
        a1 += (d4)((l4)db & nosign);
        /* trunc(x * scale) is floor(|x| * bins / R) with the sign of x (x * scale is exact: scale is a power of
           two); the comparisons (-1 where true) move positives one slot up and negatives one down from zeros. */
        i4 ta = __builtin_convertvector(va * fs, i4) - (va > zero) + (va < zero) + base;
        i4 tb = __builtin_convertvector(vb * fs, i4) - (vb > zero) + (vb < zero) + base;
        memcpy(index + i, &ta, sizeof ta);
        memcpy(index + i + 4, &tb, sizeof tb);
    }
    for (; i < m; i++) {
        float v = p[i];
        double d = v;
        s0[0] += d;
        q0[0] += d * d;
        a0[0] += fabs(d);
        index[i] = (int32_t)(d * scale) + (v > 0.0f) - (v < 0.0f) + base[i % 4];
    }
    acc[0] = s0, acc[1] = s1, acc[2] = q0, acc[3] = q1, acc[4] = a0, acc[5] = a1;
}

static int fold(const float *x, int64_t n, int bins, double *range_io, int64_t *hist, double *moments,
                uint32_t *lanes, int32_t *index);

int64_t qt_scratch_bytes(int bins)
{
    return (int64_t)sizeof(uint32_t) * LANES * (2 * bins + 3) + (int64_t)sizeof(int32_t) * BLOCK;
}

int qt_fold(const float *x, int64_t n, int bins, double *range_io, int64_t *hist, double *moments,
            void *scratch, int64_t scratch_bytes)
{
    if (bins < 1 || bins > QT_MAX_BINS || n < 0 || !scratch || scratch_bytes < qt_scratch_bytes(bins))
        return QT_BADARG;
    uint32_t *lanes = scratch;
    int32_t *index = (int32_t *)(lanes + (size_t)LANES * (2 * bins + 3));
    memset(lanes, 0, sizeof(uint32_t) * (size_t)LANES * (2 * bins + 3));
    return fold(x, n, bins, range_io, hist, moments, lanes, index);
}

DISPATCH static int fold(const float *x, int64_t n, int bins, double *range_io, int64_t *hist, double *moments,
                         uint32_t *lanes, int32_t *index)
{
    const int slots = 2 * bins + 3, center = bins + 1;
    d4 acc[6];
    double range = *range_io, scale = range > 0 ? bins / range : 0.0;
    float lo = INFINITY, hi = -INFINITY;
    int64_t zeros = 0, since_flush = 0;

    memset(acc, 0, sizeof acc);
    for (int64_t start = 0; start < n; start += BLOCK) {
        const float *p = x + start;
        int m = n - start < BLOCK ? (int)(n - start) : BLOCK;
        float bmin, bmax;
        if (block_minmax(p, m, &bmin, &bmax) || isinf(bmin) || isinf(bmax))
            return QT_NONFINITE;
        lo = bmin < lo ? bmin : lo;
        hi = bmax > hi ? bmax : hi;

        double absmax = fmax(-(double)bmin, (double)bmax);
        if (absmax > range) {
            double grown = power_of_two_at_least(absmax);
            if (range > 0) {
                int shift = 0;
                for (double r = range; r < grown && shift < 31; r *= 2.0)
                    shift++;
                for (int l = 0; l < LANES; l++)
                    shift_bins(lanes + (size_t)l * slots, bins, shift);
            }
            range = grown;
            scale = bins / range;  /* a power of two: x * scale is exact in float64 */
        }
        if (range == 0.0) {  /* all zeros so far, this block included */
            zeros += m;
            continue;
        }
        block_bins(p, m, scale, center, slots, index, acc);
        for (int i = 0; i < m; i++)  /* the scatter: neighbouring values land in different lanes */
            lanes[index[i]]++;
        since_flush += m;
        if (since_flush > (1 << 30)) {  /* keep the uint32 lanes far from overflow */
            for (int l = 0; l < LANES; l++)
                zeros += lanes[(size_t)l * slots + center];
            flush(lanes, slots, bins, hist);
            since_flush = 0;
        }
    }
    for (int l = 0; l < LANES; l++)
        zeros += lanes[(size_t)l * slots + center];
    flush(lanes, slots, bins, hist);

    double s = 0.0, q = 0.0, a = 0.0;
    for (int j = 0; j < 4; j++) {
        s += acc[0][j] + acc[1][j];
        q += acc[2][j] + acc[3][j];
        a += acc[4][j] + acc[5][j];
    }
    *range_io = range;
    moments[0] = lo;
    moments[1] = hi;
    moments[2] = (double)zeros;
    moments[3] = s;
    moments[4] = q;
    moments[5] = a;
    return QT_OK;
}

/* Present only so setuptools can build this file as an extension module; Python never imports it
   (quanttool.stats loads it with ctypes, which also releases the GIL while it runs). */
void *PyInit__statskernel(void)
{
    return 0;
}
