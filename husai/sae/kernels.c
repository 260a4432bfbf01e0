/* CPU kernels for the sparse SAE step (husai/sae/kernel_build.py builds and loads this file; the
 * plain-PyTorch versions in husai/sae/sparse.py are the reference the tests compare against).
 *
 *   topk_rows      exact top-k of each row of a [n_rows, d] block: a threshold from 2k group
 *                  maxima, one vectorised pass for the candidates above it, a quickselect on those
 *   topk_among     the same over a per-seed subset of the columns (AuxK: the dead latents)
 *   sparse_decode  out[s, r] = sum over entries e of seed s at row r of z[e] W[s, cols[e]]
 *   sum_by_latent  out[s, j] = sum over entries e of seed s at latent j of w[e] T[s, rows[e]]
 *   decode_backward  sparse_decode's backward: W's gradient as sum_by_latent, and each entry's
 *                  g_z[e] = <G[s, rows[e]], W[s, cols[e]]>, in one pass
 *   weighted_row_sum, remove_parallel, normalize_rows: b_dec's gradient and the decoder constraint
 *   adam_rows      torch.optim.Adam's step, with the decoder constraint fused (optim.KernelAdam)
 * (step.c: the TopK step's loss, fvu_loss, and the whole sparse TopK step in one call, topk_step.)
 *
 * Every sum runs in entry order whatever the thread count: the work is split by output row (by
 * seed and row or latent range), never inside one sum, so a result is the same on 1 or 16 threads.
 * Selections are canonical: larger value first, then lower column, and each row's k columns come
 * out in increasing order, so the chosen set and its order depend on the values alone.
 */
#include "kernels.h"
#ifdef __AVX512F__
#include <immintrin.h>
#endif

/* Ranking keys: a value and its column in one uint64, larger = better: the value's bits made
 * order-preserving in the high word (-0 as +0, so equal values tie), the column reversed in the low
 * word (ties go to the lower column). Integer compares keep the quickselect nearly branch-free. */
static inline uint64_t key_of(float v, int32_t col) {
    uint32_t u;
    v = v == 0.0f ? 0.0f : v;
    memcpy(&u, &v, 4);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((uint64_t)u << 32) | (uint32_t)(INT32_MAX - col);
}

/* The k-th largest of a[0..n) (1 <= k <= n; no NaN), by quickselect (Hoare partition, median-of-three
 * pivot); a is reordered. One body for the ranking keys and for the floats of the group maxima. */
#define DEFINE_KTH_LARGEST(name, T)                                                     \
    static T name(T *a, int n, int k) {                                                 \
        int lo = 0, hi = n - 1, t = k - 1;                                              \
        while (lo < hi) {                                                               \
            T x = a[lo], y = a[lo + (hi - lo) / 2], z = a[hi], p;                       \
            if (x > y) p = y > z ? y : (x > z ? z : x);                                 \
            else p = x > z ? x : (y > z ? z : y);                                       \
            int i = lo, j = hi;                                                         \
            while (i <= j) {                                                            \
                while (a[i] > p) i++;                                                   \
                while (p > a[j]) j--;                                                   \
                if (i <= j) { T s = a[i]; a[i] = a[j]; a[j] = s; i++; j--; }            \
            }                                                                           \
            if (t <= j) hi = j;                                                         \
            else if (t >= i) lo = i;                                                    \
            else return a[t];                                                           \
        }                                                                               \
        return a[t];                                                                    \
    }
DEFINE_KTH_LARGEST(kth_largest, uint64_t)
DEFINE_KTH_LARGEST(kth_largest_f, float)

scratch_t scratch_new(int n, int k) {
    scratch_t s = {malloc(sizeof(float) * (n + 16)), malloc(sizeof(int32_t) * (n + 16)),
                   malloc(sizeof(uint64_t) * (n + 16)), malloc(sizeof(uint64_t) * (n + 16)), malloc(sizeof(float) * (2 * k + 1))};
    return s;
}

void scratch_free(scratch_t s) { free(s.cv); free(s.ci); free(s.keys); free(s.work); free(s.gmax); }

/* Top-k of v[0..n) (+ b[0..n) when b is not NULL; ids[j] the column of v[j], increasing; NULL: the
 * column is j), 1 <= k <= n. Writes the k columns, increasing, to out_i.
 * The threshold: split the n values into m strided groups {j, j + m, j + 2m, ...}, m = 2k (k when
 * n < 4k); the k-th largest of the m group maxima, tau, is <= the k-th largest value (k values,
 * those maxima, are >= tau), so every value of the top k is >= tau, and few others are: on the
 * grokked model's pre-activations (d 2048, k 32) 43 values on average with m = 2k, 126 with m = k
 * (measured); the quickselect on those candidates is what costs. */
void select_row(const float *v, const float *b, const int32_t *ids, int n, int k, int64_t *out_i, scratch_t sc) {
    float *cv = sc.cv, *gmax = sc.gmax;
    int32_t *ci = sc.ci;
    int c = 0;
    if (n >= 2 * k) {
        int m = n >= 4 * k ? 2 * k : k;
        int full = n / m;  /* full sweeps of m; the rest join groups 0.. */
#if defined(__AVX512F__)
        if (m % 64 == 0) {  /* 64 groups at a time, their maxima in four registers through all sweeps */
            for (int j0 = 0; j0 < m; j0 += 64) {
                __m512 a[4];
                for (int q = 0; q < 4; q++) {
                    a[q] = _mm512_loadu_ps(v + j0 + 16 * q);
                    if (b) a[q] = _mm512_add_ps(a[q], _mm512_loadu_ps(b + j0 + 16 * q));
                }
                for (int t = 1; t < full; t++) {
                    int64_t o = (int64_t)t * m + j0;
                    for (int q = 0; q < 4; q++) {
                        __m512 y = _mm512_loadu_ps(v + o + 16 * q);
                        if (b) y = _mm512_add_ps(y, _mm512_loadu_ps(b + o + 16 * q));
                        a[q] = _mm512_max_ps(y, a[q]);  /* y > a ? y : a, as the scalar loop */
                    }
                }
                for (int q = 0; q < 4; q++) _mm512_storeu_ps(gmax + j0 + 16 * q, a[q]);
            }
        } else
#endif
        {
            for (int j = 0; j < m; j++) gmax[j] = b ? v[j] + b[j] : v[j];
            for (int t = 1; t < full; t++) {
                const float *w = v + (int64_t)t * m, *wb = b ? b + (int64_t)t * m : NULL;
                if (wb) for (int j = 0; j < m; j++) { float y = w[j] + wb[j]; gmax[j] = y > gmax[j] ? y : gmax[j]; }
                else for (int j = 0; j < m; j++) gmax[j] = w[j] > gmax[j] ? w[j] : gmax[j];
            }
        }
        for (int j = 0; j < n - full * m; j++) {
            float y = b ? v[(int64_t)full * m + j] + b[(int64_t)full * m + j] : v[(int64_t)full * m + j];
            gmax[j] = y > gmax[j] ? y : gmax[j];
        }
        for (int j = 0; j < m; j++) gmax[j] = isnan(gmax[j]) ? -INFINITY : gmax[j];  /* a total order */
        float tau;
#if defined(__AVX512F__)
        if (m % 16 == 0 && m <= 256) {
            /* by counting: the k-th largest is the largest g with #{maxima >= g} >= k; m^2 / 16
             * vector compares, branch-free: the whole top-k ~15% faster than with the quickselect (measured) */
            tau = -INFINITY;
            for (int i = 0; i < m; i++) {
                __m512 g = _mm512_set1_ps(gmax[i]);
                int cnt = 0;
                for (int q = 0; q < m; q += 16)
                    cnt += __builtin_popcount(_mm512_cmp_ps_mask(_mm512_loadu_ps(gmax + q), g, _CMP_GE_OQ));
                tau = cnt >= k && gmax[i] > tau ? gmax[i] : tau;
            }
        } else
#endif
        tau = kth_largest_f(gmax, m, k);
        int j = 0;
#if defined(__AVX512F__)
        __m512 vt = _mm512_set1_ps(tau);
        __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        for (; j + 16 <= n; j += 16) {  /* branch-free compaction of the values >= tau */
            __m512 x = _mm512_loadu_ps(v + j);
            if (b) x = _mm512_add_ps(x, _mm512_loadu_ps(b + j));
            __mmask16 msk = _mm512_cmp_ps_mask(x, vt, _CMP_GE_OQ);
            __m512i id = ids ? _mm512_loadu_si512(ids + j) : _mm512_add_epi32(lane, _mm512_set1_epi32(j));
            _mm512_storeu_ps(cv + c, _mm512_maskz_compress_ps(msk, x));
            _mm512_storeu_si512(ci + c, _mm512_maskz_compress_epi32(msk, id));
            c += __builtin_popcount(msk);
        }
#endif
        for (; j < n; j++) {
            float y = b ? v[j] + b[j] : v[j];
            cv[c] = y;
            ci[c] = ids ? ids[j] : j;
            c += y >= tau;
        }
    }
    if (c < k) {  /* n < 2k, or NaNs (no comparison holds): rank everything, NaN as -inf */
        c = 0;
        for (int j = 0; j < n; j++, c++) {
            float y = b ? v[j] + b[j] : v[j];
            cv[c] = isnan(y) ? -INFINITY : y;
            ci[c] = ids ? ids[j] : j;
        }
    }
    uint64_t *keys = sc.keys;
    for (int j = 0; j < c; j++) keys[j] = key_of(cv[j], ci[j]);
    uint64_t kth = 0;
    if (c > k) {
        memcpy(sc.work, keys, sizeof(uint64_t) * c);
        kth = kth_largest(sc.work, c, k);
    }
    /* the candidates are in increasing column order: keep the k at least as good as the k-th */
    int o = 0;
    for (int j = 0; j < c && o < k; j++) {  /* o < k: the write stays in the row */
        out_i[o] = ci[j];
        o += keys[j] >= kth;
    }
}

/* x [n_rows, d] -> vals, idx [n_rows, k] (k <= d) of x + bias: bias [n_seeds, d] or NULL, row r
 * belonging to seed seed_major ? r / rows_per_seed : r % n_seeds (husai.sae.kernels.topk_rows). */
void topk_rows(const float *x, int64_t n_rows, int d, int k, const float *bias, int n_seeds, int64_t rows_per_seed,
               int seed_major, float *vals, int64_t *idx, int n_threads) {
    select_rows(x, n_rows, d, NULL, k, bias, n_seeds, rows_per_seed, seed_major, vals, idx, n_threads);
}

/* topk_rows with seed s's rows keeping ks[s] <= k_max (ks NULL: k_max for all), written with stride k_max;
 * a row's slots past its k get value 0 at its first column (topk_step's padding: z = 0, no effect). */
void select_rows(const float *x, int64_t n_rows, int d, const int *ks, int k_max, const float *bias, int n_seeds,
                 int64_t rows_per_seed, int seed_major, float *vals, int64_t *idx, int n_threads) {
    #pragma omp parallel num_threads(n_threads)
    {
        scratch_t sc = scratch_new(d, k_max);
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < n_rows; r++) {
            int64_t s = seed_major ? r / rows_per_seed : r % n_seeds;
            const float *v = x + r * d, *b = bias ? bias + s * d : NULL;
            int k = ks ? ks[s] : k_max;
            float *vr = vals + r * k_max;
            int64_t *ir = idx + r * k_max;
            select_row(v, b, NULL, d, k, ir, sc);
            for (int j = 0; j < k; j++) vr[j] = b ? v[ir[j]] + b[ir[j]] : v[ir[j]];
            for (int j = k; j < k_max; j++) { vr[j] = 0.0f; ir[j] = ir[0]; }
        }
        scratch_free(sc);
    }
}

/* The top k of each row among its seed's allowed columns whose values are above `above`: x [n_rows, d]
 * (plus bias [n_seeds, d] when not NULL), row r belonging to seed seed_major ? r / rows_per_seed :
 * r % n_seeds, allowed [n_seeds, d] (bytes, nonzero = allowed). A row with fewer than k such values gets
 * them all, then padding (-inf at column pad_col). -> vals, idx [n_rows, k]; returns the most real
 * entries any row has. (AuxK passes above = 0: a value <= 0 is relu'd to 0 and has no gradient, so
 * leaving it out changes nothing but the work.) */
int64_t topk_among(const float *x, int64_t n_rows, int d, int k, const uint8_t *allowed, int n_seeds,
                   int64_t rows_per_seed, int seed_major, const float *bias, float above, int64_t pad_col,
                   float *vals, int64_t *idx, int n_threads) {
    int32_t *cols = malloc(sizeof(int32_t) * ((size_t)n_seeds * d + 1));  /* each seed's allowed, increasing */
    int *n_cols = malloc(sizeof(int) * n_seeds), max_cols = 1;
    for (int s = 0; s < n_seeds; s++) {
        int n = 0;
        for (int j = 0; j < d; j++) { cols[(int64_t)s * d + n] = j; n += allowed[(int64_t)s * d + j] != 0; }
        n_cols[s] = n;
        max_cols = n > max_cols ? n : max_cols;
    }
    int64_t widest = 0;
    #pragma omp parallel num_threads(n_threads) reduction(max:widest)
    {
        scratch_t sc = scratch_new(max_cols, k);
        float *buf = malloc(sizeof(float) * (max_cols + 1));
        int32_t *ids = malloc(sizeof(int32_t) * (max_cols + 1));
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < n_rows; r++) {
            int64_t s = seed_major ? r / rows_per_seed : r % n_seeds;
            const int32_t *cs = cols + s * d;
            const float *row = x + r * d, *b = bias ? bias + s * d : NULL;
            int n = 0;
            for (int j = 0; j < n_cols[s]; j++) {  /* branch-free compaction of the values above */
                float v = b ? row[cs[j]] + b[cs[j]] : row[cs[j]];
                buf[n] = v;
                ids[n] = cs[j];
                n += v > above;
            }
            int kk = n < k ? n : k;
            if (kk > 0) select_row(buf, NULL, ids, n, kk, idx + r * k, sc);
            for (int j = 0; j < kk; j++) vals[r * k + j] = b ? row[idx[r * k + j]] + b[idx[r * k + j]] : row[idx[r * k + j]];
            for (int j = kk; j < k; j++) { vals[r * k + j] = -INFINITY; idx[r * k + j] = pad_col; }
            widest = kk > widest ? kk : widest;
        }
        scratch_free(sc);
        free(buf);
        free(ids);
    }
    free(cols);
    free(n_cols);
    return widest;
}

/* Split [0, n) into parts: part p of np covers [n * p / np, n * (p + 1) / np). */
static inline int64_t part(int64_t n, int p, int np) { return n * p / np; }

/* The scatter both sums below are: out[s, key[e]] += w[e] * src[s, idx[e] mod n_src] over seed s's
 * entries, out [S, n_out, d], src [S, n_src, d]; bias_out [S, n_out] (or NULL) gets the sums of w.
 * Tasks: S * parts ranges of output rows; each adds its own rows' entries in entry order, so every
 * sum is the same whatever the thread count. With key_sorted (each seed's keys non-decreasing, as
 * Codes' rows are) a task finds its entries by binary search; else it reads its seed's whole list. */
static void scatter_rows(const float *w, const int64_t *key, const int64_t *idx, const float *src, int S, int64_t M,
                         int64_t n_out, int64_t n_src, int d, float *out, float *bias_out, int key_sorted, int parts,
                         int n_threads) {
    #pragma omp parallel for num_threads(n_threads) schedule(dynamic, 1)
    for (int t = 0; t < S * parts; t++) {
        int s = t / parts, p = t % parts;
        int64_t k0 = part(n_out, p, parts), k1 = part(n_out, p + 1, parts);
        float *o = out + (int64_t)s * n_out * d, *bo = bias_out ? bias_out + (int64_t)s * n_out : NULL;
        memset(o + k0 * d, 0, sizeof(float) * (k1 - k0) * d);
        if (bo) memset(bo + k0, 0, sizeof(float) * (k1 - k0));
        const int64_t *ks = key + (int64_t)s * M, *is = idx + (int64_t)s * M;
        const float *ws = w + (int64_t)s * M, *ss = src + (int64_t)s * n_src * d;
        int64_t e = 0, lo = 0, hi = M;
        if (key_sorted) {  /* the first entry with key >= k0 */
            while (lo < hi) { int64_t mid = lo + (hi - lo) / 2; if (ks[mid] < k0) lo = mid + 1; else hi = mid; }
            e = lo;
        }
        for (; e < M; e++) {
            int64_t k = ks[e];
            if (k < k0 || k >= k1) {
                if (key_sorted) break;
                continue;
            }
            float a = ws[e];
            if (a == 0.0f) continue;  /* adds nothing: skipping is exact (sums start at +0) */
            int64_t i = is[e];
            float *dst = o + k * d;
            const float *row = ss + (i < n_src ? i : i % n_src) * d;
            #pragma omp simd
            for (int c = 0; c < d; c++) dst[c] += a * row[c];
            if (bo) bo[k] += a;
        }
    }
}

/* out [S, R, d_in] = sum over entries (rows, cols [S, M], z [S, M]) of z W[s, col], W [S, d_sae, d_in]:
 * by output row; each seed's rows non-decreasing (husai.sae.sparse.Codes). */
void sparse_decode(const float *z, const int64_t *rows, const int64_t *cols, const float *W, int S, int64_t M,
                   int d_sae, int d_in, int64_t R, float *out, int parts, int n_threads) {
    scatter_rows(z, rows, cols, W, S, M, R, d_sae, d_in, out, NULL, 1, parts, n_threads);
}

/* out [S, d_sae, d_in]: out[s, j] = sum over entries e of seed s with cols[e] = j of w[e] T[s, rows[e] mod R],
 * T [S, R, d_in] (entries' rows may run past R: TopK's AuxK entries reuse the inputs' rows, R..2R-1);
 * bias_out [S, d_sae] (may be NULL): the sums of w. By latent. */
void sum_by_latent(const float *w, const int64_t *rows, const int64_t *cols, const float *T, int S, int64_t M,
                   int d_sae, int d_in, int64_t R, float *out, float *bias_out, int parts, int n_threads) {
    scatter_rows(w, cols, rows, T, S, M, d_sae, R, d_in, out, bias_out, 0, parts, n_threads);
}

/* out [S, d_in]: out[s] = sum_j w[s, j] W[s, j] (W [S, d_sae, d_in]), j increasing, zero weights skipped. */
void weighted_row_sum(const float *w, const float *W, int S, int d_sae, int d_in, float *out, int n_threads) {
    #pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int s = 0; s < S; s++) {
        float *o = out + (int64_t)s * d_in;
        memset(o, 0, sizeof(float) * d_in);
        for (int j = 0; j < d_sae; j++) {
            float a = w[(int64_t)s * d_sae + j];
            if (a == 0.0f) continue;
            const float *src = W + ((int64_t)s * d_sae + j) * d_in;
            #pragma omp simd
            for (int i = 0; i < d_in; i++) o[i] += a * src[i];
        }
    }
}

/* The decoder constraint (Gao et al. sec. 2.3), rows of d: G[r] -= <G[r], W[r]> W[r] (the gradient
 * without its component along a unit row), one pass instead of a dot, then a multiply-add. */
void remove_parallel(float *G, const float *W, int64_t n_rows, int d, int n_threads) {
    #pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t r = 0; r < n_rows; r++) {
        float *g = G + r * d;
        const float *w = W + r * d;
        float dot = 0.f;
        #pragma omp simd reduction(+:dot)
        for (int i = 0; i < d; i++) dot += g[i] * w[i];
        #pragma omp simd
        for (int i = 0; i < d; i++) g[i] -= dot * w[i];
    }
}

/* W[r] /= max(||W[r]||, eps): unit rows after the optimiser's step. */
void normalize_rows(float *W, int64_t n_rows, int d, float eps, int n_threads) {
    #pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t r = 0; r < n_rows; r++) {
        float *w = W + r * d, sq = 0.f;
        #pragma omp simd reduction(+:sq)
        for (int i = 0; i < d; i++) sq += w[i] * w[i];
        float n = sqrtf(sq);
        n = n > eps ? n : eps;
        #pragma omp simd
        for (int i = 0; i < d; i++) w[i] /= n;
    }
}

/* The decoder's backward in one pass over the entries, by latent (sum_by_latent's tasks):
 *   g_W[s, j] = sum over entries e at latent j of z[e] G[s, rows[e]]     (W_dec's gradient)
 *   g_z[e]    = <G[s, rows[e]], W[s, cols[e]]>                          (0 where skip_zero
 *                                                                        and z[e] = 0)
 * G[s, rows[e]] is read once for both, and W's rows of the task's latents stay in cache. */
void decode_backward(const float *z, const int64_t *rows, const int64_t *cols, const float *G, const float *W,
                     int S, int64_t M, int d_sae, int d_in, int64_t R, int skip_zero, float *g_W, float *g_z,
                     int parts, int n_threads) {
    #pragma omp parallel for num_threads(n_threads) schedule(dynamic, 1)
    for (int t = 0; t < S * parts; t++) {
        int s = t / parts, p = t % parts;
        int64_t j0 = part(d_sae, p, parts), j1 = part(d_sae, p + 1, parts);
        float *o = g_W + (int64_t)s * d_sae * d_in;
        memset(o + j0 * d_in, 0, sizeof(float) * (j1 - j0) * d_in);
        const int64_t *rs = rows + (int64_t)s * M, *cs = cols + (int64_t)s * M;
        const float *zs = z + (int64_t)s * M, *Gs = G + (int64_t)s * R * d_in, *Ws = W + (int64_t)s * d_sae * d_in;
        float *gz = g_z + (int64_t)s * M;
        for (int64_t e = 0; e < M; e++) {
            int64_t j = cs[e];
            if (j < j0 || j >= j1) continue;
            float a = zs[e];
            if (a == 0.0f && skip_zero) { gz[e] = 0.0f; continue; }
            const float *g = Gs + rs[e] * d_in, *w = Ws + j * d_in;
            float acc = 0.f;
            #pragma omp simd reduction(+:acc)
            for (int i = 0; i < d_in; i++) acc += g[i] * w[i];
            gz[e] = acc;
            if (a == 0.0f) continue;
            float *dst = o + j * d_in;
            #pragma omp simd
            for (int i = 0; i < d_in; i++) dst[i] += a * g[i];
        }
    }
}

/* torch.optim.Adam's step (no weight decay) on n_rows rows of d, one pass per row:
 *   g' = g - <g, p> p                        when constrain (the decoder: unit rows, the gradient
 *                                            without its part along the row, Gao et al. sec. 2.3)
 *   m += (1 - b1) (g' - m);  v = b2 v + (1 - b2) g'^2
 *   p -= step_size m / (sqrt(v) / bc2_sqrt + eps)       step_size = lr / (1 - b1^t), bc2_sqrt = sqrt(1 - b2^t)
 *   p /= max(||p||, 1e-8)                    when constrain (back to unit rows)
 * g is read, never written. */
void adam_rows(float *P, const float *G, float *Mo, float *V, int64_t n_rows, int d, float step_size, float b1,
               float b2, float eps, float bc2_sqrt, int constrain, int n_threads) {
    #pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t r = 0; r < n_rows; r++) {
        float *restrict p = P + r * d, *restrict m = Mo + r * d, *restrict v = V + r * d;
        const float *restrict g = G + r * d;
        float dot = 0.f, sq = 0.f;
        if (constrain) {
            #pragma omp simd reduction(+:dot)
            for (int i = 0; i < d; i++) dot += g[i] * p[i];
        }
        #pragma omp simd reduction(+:sq)
        for (int i = 0; i < d; i++) {
            float gi = g[i] - dot * p[i];  /* dot = 0 unless constrain: gi = g[i] exactly */
            m[i] += (1.0f - b1) * (gi - m[i]);
            v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
            p[i] -= step_size * m[i] / (sqrtf(v[i]) / bc2_sqrt + eps);
            sq += p[i] * p[i];
        }
        if (constrain) {
            float n = sqrtf(sq);
            n = n > 1e-8f ? n : 1e-8f;
            #pragma omp simd
            for (int i = 0; i < d; i++) p[i] /= n;
        }
    }
}
