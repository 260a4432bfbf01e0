/* The TopK step's loss and the one-call TopK step, built from kernels.c's pieces (kernels.h).
 * Every sum runs in row or entry order within one task, as in kernels.c: results do not depend on the
 * thread count. */
#include "kernels.h"

/* The TopK family's loss on the decoded rows, with its gradient, in one pass per seed (parallel over
 * seeds only, each seed's sums in row order: the same on any thread count). Per seed s, with
 * out [S, (L + aux) B, d] the sparse decode without b_dec (level l's rows lB..(l+1)B-1, then AuxK's),
 * x the batch (x_stride 0: one [B, d] for all seeds, else [S, B, d]):
 *   recon_l[b] = b_dec + sum_{j <= l} out[jB + b],   sq_l = mean_b ||recon_l[b] - x[b]||^2
 *   var = mean_b ||x[b] - mean(x)||^2 (>= 1e-12),   mse = sq_{L-1},   loss = sum_l sq_l / var
 *   + aux_coeff * mean_b ||out[LB + b] - e[b]||^2 / (mean_b ||e[b] - mean(e)||^2 (>= 1e-12))
 *     with e = x - recon_{L-1} (no gradient through e), for seeds with aux_on[s]
 * and the gradients of loss[s]: g_out [S, (L + aux) B, d] and g_bdec [S, d]. Row sums in float,
 * totals over rows in double. */
void fvu_loss(const float *out, const float *b_dec, const float *x, int64_t x_stride, int S, int B, int d, int L,
              int aux, const int8_t *aux_on, float aux_coeff, float *loss, float *mse, float *var, float *g_out,
              float *g_bdec, int n_threads) {
    #pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int s = 0; s < S; s++) {
        const int64_t R = (int64_t)(L + aux) * B, D = d;
        const float *o = out + s * R * D, *xs = x + s * x_stride, *bd = b_dec + s * D;
        float *g = g_out + s * R * D, *gb = g_bdec + s * D, *ga = g + (int64_t)L * B * D;
        float *mx = calloc(3 * (size_t)d, sizeof(float)), *me = mx + d, *rb = mx + 2 * d;
        double *sq = calloc(L, sizeof(double)), v = 0.0, err = 0.0, ve = 0.0, total = 0.0;
        for (int b = 0; b < B; b++) {
            #pragma omp simd
            for (int c = 0; c < d; c++) mx[c] += xs[b * D + c];
        }
        for (int c = 0; c < d; c++) mx[c] /= B;
        /* g's rows first hold recon_l - x (main) and out_aux - e = out_aux + recon_{L-1} - x (AuxK) */
        for (int b = 0; b < B; b++) {
            const float *xb = xs + b * D;
            float rv = 0.f;
            #pragma omp simd reduction(+:rv)
            for (int c = 0; c < d; c++) { float t = xb[c] - mx[c]; rv += t * t; rb[c] = bd[c]; }
            v += rv;
            for (int l = 0; l < L; l++) {
                const float *ol = o + ((int64_t)l * B + b) * D;
                float *gl = g + ((int64_t)l * B + b) * D, rs = 0.f;
                #pragma omp simd reduction(+:rs)
                for (int c = 0; c < d; c++) { rb[c] += ol[c]; gl[c] = rb[c] - xb[c]; rs += gl[c] * gl[c]; }
                sq[l] += rs;
            }
            if (aux && aux_on[s]) {
                const float *oa = o + ((int64_t)L * B + b) * D, *gl = g + ((int64_t)(L - 1) * B + b) * D;
                float *gab = ga + b * D, re = 0.f;
                #pragma omp simd reduction(+:re)
                for (int c = 0; c < d; c++) { gab[c] = oa[c] + gl[c]; re += gab[c] * gab[c]; me[c] -= gl[c]; }
                err += re;
            }
        }
        v = v / B > 1e-12 ? v / B : 1e-12;
        for (int l = 0; l < L; l++) total += sq[l] / B;
        total /= v;
        if (aux && aux_on[s]) {  /* e's variance, about its mean (a second pass, as torch's) */
            for (int c = 0; c < d; c++) me[c] /= B;
            for (int b = 0; b < B; b++) {
                const float *gl = g + ((int64_t)(L - 1) * B + b) * D;
                float re = 0.f;
                #pragma omp simd reduction(+:re)
                for (int c = 0; c < d; c++) { float e = -gl[c] - me[c]; re += e * e; }
                ve += re;
            }
            ve = ve / B > 1e-12 ? ve / B : 1e-12;
            total += aux_coeff * (err / B) / ve;
            float sa = (float)(2.0 * aux_coeff / ((double)B * ve));
            #pragma omp simd
            for (int64_t i = 0; i < (int64_t)B * D; i++) ga[i] *= sa;
        } else if (aux) {
            memset(ga, 0, sizeof(float) * B * D);
        }
        /* d recon_l = 2 (recon_l - x) / (B var); out's level j gets the sum over l >= j, b_dec all of it */
        float scale = (float)(2.0 / ((double)B * v));
        memset(gb, 0, sizeof(float) * D);
        for (int b = 0; b < B; b++) {
            #pragma omp simd
            for (int c = 0; c < d; c++) rb[c] = 0.f;
            for (int l = L - 1; l >= 0; l--) {
                float *gl = g + ((int64_t)l * B + b) * D;
                #pragma omp simd
                for (int c = 0; c < d; c++) { rb[c] += scale * gl[c]; gl[c] = rb[c]; }
            }
            #pragma omp simd
            for (int c = 0; c < d; c++) gb[c] += rb[c];
        }
        loss[s] = (float)total;
        mse[s] = (float)(sq[L - 1] / B);
        var[s] = (float)v;
        free(mx);
        free(sq);
    }
}

/* The sparse part of one TopK training step for S seeds, after the encoder matmul, forward and
 * backward in one call (husai.sae.topk._KernelTopKStep): the same arithmetic as the step piece by
 * piece, from the same functions (select_rows, as topk_rows; topk_among, sparse_decode, fvu_loss,
 * decode_backward, sum_by_latent, weighted_row_sum). pre: the matmul without its bias (seed_major: [S, B, d_sae]; else [B, S, d_sae]),
 * bias [S, d_sae]; x [B, d_in] (x_stride 0) or [S, B, d_in]; dead [S, d_sae] bytes; ks [S] each seed's k.
 *   entries: per input b, its seed's k largest of pre + bias (row b), then with any dead latent the
 *     up to k_aux largest positive ones among the dead (row B + b, AuxK); z = relu(value)
 *   -> loss, mse, var, l0 [S], fired [S, d_sae] (bytes: a main entry > 0 there), and the gradients of
 *     every loss[s]: g_W_enc_T, g_W_dec [S, d_sae, d_in], g_b_enc [S, d_sae], g_b_dec [S, d_in].
 * parts: output ranges per seed of the sparse sums (kernels.py _parts). */
void topk_step(const float *pre, int seed_major, const float *bias, const float *x, int64_t x_stride,
               const float *W_enc_T, const float *b_dec, const float *W_dec, const uint8_t *dead, const int *ks,
               int S, int B, int d_sae, int d_in, int k_aux, float aux_coeff, float *loss, float *mse, float *var,
               float *l0, uint8_t *fired, float *g_W_enc_T, float *g_b_enc, float *g_b_dec, float *g_W_dec,
               int parts, int n_threads) {
    int km = 1, aux = 0;
    int8_t *aux_on = malloc(S);  /* seed s has a dead latent; aux: any seed has */
    for (int s = 0; s < S; s++) {
        km = ks[s] > km ? ks[s] : km;
        aux_on[s] = 0;
        for (int j = 0; j < d_sae; j++) aux_on[s] |= dead[(int64_t)s * d_sae + j] != 0;
        aux |= aux_on[s];
    }
    k_aux = k_aux < d_sae ? k_aux : d_sae;
    const int64_t n_rows = (int64_t)S * B;
    /* the selections, in pre's memory order (row r: seed_major ? (r / B, r % B) : (r % S, r / S)) */
    float *sv = malloc(sizeof(float) * n_rows * km), *av = NULL;
    int64_t *si = malloc(sizeof(int64_t) * n_rows * km), *ai = NULL, ka = 0;
    select_rows(pre, n_rows, d_sae, ks, km, bias, S, B, seed_major, sv, si, n_threads);
    if (aux) {
        av = malloc(sizeof(float) * n_rows * k_aux);
        ai = malloc(sizeof(int64_t) * n_rows * k_aux);
        ka = topk_among(pre, n_rows, d_sae, k_aux, dead, S, B, seed_major, bias, 0.0f, 0, av, ai, n_threads);
        if (ka < 1) ka = 1;  /* a row of padding (-inf: z = 0) keeps the layout */
    }
    /* entry lists per seed, rows sorted: input b's k_max main entries, then its ka AuxK ones at row B + b */
    const int64_t M = (int64_t)B * (km + ka), R = (int64_t)B * (1 + aux);
    int64_t *rows = malloc(sizeof(int64_t) * S * M), *cols = malloc(sizeof(int64_t) * S * M);
    float *z = malloc(sizeof(float) * S * M), *g_z = malloc(sizeof(float) * S * M);
    for (int s = 0; s < S; s++) {
        int live = 0;
        uint8_t *f = fired + (int64_t)s * d_sae;
        memset(f, 0, d_sae);
        for (int b = 0; b < B; b++) {
            int64_t r = seed_major ? (int64_t)s * B + b : (int64_t)b * S + s, e = (int64_t)s * M + (int64_t)b * km;
            for (int j = 0; j < km; j++) {
                float v = sv[r * km + j];
                rows[e + j] = b;
                cols[e + j] = si[r * km + j];
                z[e + j] = v > 0.0f ? v : 0.0f;
                live += v > 0.0f;
                if (v > 0.0f) f[si[r * km + j]] = 1;
            }
            if (aux) {
                e = (int64_t)s * M + (int64_t)B * km + (int64_t)b * ka;
                for (int j = 0; j < ka; j++) {
                    float v = av[r * k_aux + j];
                    rows[e + j] = B + b;
                    cols[e + j] = ai[r * k_aux + j];
                    z[e + j] = v > 0.0f ? v : 0.0f;  /* padding -inf: 0 */
                }
            }
        }
        l0[s] = (float)live / B;
    }
    float *out = malloc(sizeof(float) * S * R * d_in), *g_out = malloc(sizeof(float) * S * R * d_in);
    float *centred = malloc(sizeof(float) * S * B * d_in), *g_bdec_fvu = malloc(sizeof(float) * S * d_in);
    sparse_decode(z, rows, cols, W_dec, S, M, d_sae, d_in, R, out, parts, n_threads);
    fvu_loss(out, b_dec, x, x_stride, S, B, d_in, 1, aux, aux_on, aux_coeff, loss, mse, var, g_out, g_bdec_fvu, n_threads);
    decode_backward(z, rows, cols, g_out, W_dec, S, M, d_sae, d_in, R, 1, g_W_dec, g_z, parts, n_threads);
    /* the encoder: d pre = d z where z > 0 (decode_backward's skip_zero leaves 0 elsewhere), at pre = (x - b_dec) W_enc + b_enc */
    for (int s = 0; s < S; s++)
        for (int b = 0; b < B; b++) {
            const float *xb = x + s * x_stride + (int64_t)b * d_in, *bd = b_dec + (int64_t)s * d_in;
            float *cb = centred + ((int64_t)s * B + b) * d_in;
            #pragma omp simd
            for (int c = 0; c < d_in; c++) cb[c] = xb[c] - bd[c];
        }
    sum_by_latent(g_z, rows, cols, centred, S, M, d_sae, d_in, B, g_W_enc_T, g_b_enc, parts, n_threads);
    weighted_row_sum(g_b_enc, W_enc_T, S, d_sae, d_in, g_b_dec, n_threads);
    for (int64_t i = 0; i < (int64_t)S * d_in; i++) g_b_dec[i] = g_bdec_fvu[i] - g_b_dec[i];
    free(sv); free(si); free(av); free(ai); free(rows); free(cols); free(z); free(g_z); free(aux_on);
    free(out); free(g_out); free(centred); free(g_bdec_fvu);
}
