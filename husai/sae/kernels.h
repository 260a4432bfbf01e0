/* Declarations shared by kernels.c (selections, sparse sums, the optimiser's passes) and step.c (the
 * TopK step's loss and the one-call step, built from kernels.c's pieces); husai/sae/kernels.py
 * compiles both into one library. */
#ifndef HUSAI_KERNELS_H
#define HUSAI_KERNELS_H
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Scratch for select_row, per thread: n + 16 of each (the vector compaction writes a full vector). */
typedef struct { float *cv; int32_t *ci; uint64_t *keys, *work; float *gmax; } scratch_t;
scratch_t scratch_new(int n, int k);
void scratch_free(scratch_t s);
void select_row(const float *v, const float *b, const int32_t *ids, int n, int k, int64_t *out_i, scratch_t sc);
void select_rows(const float *x, int64_t n_rows, int d, const int *ks, int k_max, const float *bias, int n_seeds,
                 int64_t rows_per_seed, int seed_major, float *vals, int64_t *idx, int n_threads);

/* The entry points that husai/sae/kernels.py calls through ctypes. This block is their one declaration:
 * kernel_build.py reads their argument types from here (a pointer, int, int64_t or float each), kernels.c and
 * step.c are compiled against it (a definition that differs is a compile error), and the build runs with
 * -Werror=missing-prototypes, so a function outside it is never exported by mistake. One prototype a
 * statement, no comments inside the block. */
/* BEGIN ENTRY POINTS */
void topk_rows(const float *x, int64_t n_rows, int d, int k, const float *bias, int n_seeds, int64_t rows_per_seed,
               int seed_major, float *vals, int64_t *idx, int n_threads);
int64_t topk_among(const float *x, int64_t n_rows, int d, int k, const uint8_t *allowed, int n_seeds,
                   int64_t rows_per_seed, int seed_major, const float *bias, float above, int64_t pad_col,
                   float *vals, int64_t *idx, int n_threads);
void sparse_decode(const float *z, const int64_t *rows, const int64_t *cols, const float *W, int S, int64_t M,
                   int d_sae, int d_in, int64_t R, float *out, int parts, int n_threads);
void sum_by_latent(const float *w, const int64_t *rows, const int64_t *cols, const float *T, int S, int64_t M,
                   int d_sae, int d_in, int64_t R, float *out, float *bias_out, int parts, int n_threads);
void decode_backward(const float *z, const int64_t *rows, const int64_t *cols, const float *G, const float *W,
                     int S, int64_t M, int d_sae, int d_in, int64_t R, int skip_zero, float *g_W, float *g_z,
                     int parts, int n_threads);
void weighted_row_sum(const float *w, const float *W, int S, int d_sae, int d_in, float *out, int n_threads);
void remove_parallel(float *G, const float *W, int64_t n_rows, int d, int n_threads);
void normalize_rows(float *W, int64_t n_rows, int d, float eps, int n_threads);
void adam_rows(float *P, const float *G, float *Mo, float *V, int64_t n_rows, int d, float step_size, float b1,
               float b2, float eps, float bc2_sqrt, int constrain, int n_threads);
void fvu_loss(const float *out, const float *b_dec, const float *x, int64_t x_stride, int S, int B, int d, int L,
              int aux, const int8_t *aux_on, float aux_coeff, float *loss, float *mse, float *var, float *g_out,
              float *g_bdec, int n_threads);
void topk_step(const float *pre, int seed_major, const float *bias, const float *x, int64_t x_stride,
               const float *W_enc_T, const float *b_dec, const float *W_dec, const uint8_t *dead, const int *ks,
               int S, int B, int d_sae, int d_in, int k_aux, float aux_coeff, float *loss, float *mse, float *var,
               float *l0, uint8_t *fired, float *g_W_enc_T, float *g_b_enc, float *g_b_dec, float *g_W_dec,
               int parts, int n_threads);
/* END ENTRY POINTS */
#endif
