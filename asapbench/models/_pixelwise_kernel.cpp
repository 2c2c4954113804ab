// ASAP-Net's pixelwise stream as one fused CPU kernel (pixelwise_impl="fused").
//
// Each tile's MLP runs on blocks of ROWS pixels through all layers before the next block starts, so a block's
// activations stay in the L1/L2 cache; each layer is a register-blocked product (MR pixels x 2 vectors of output
// channels per step) whose accumulators start at the tile's bias and get the LeakyReLU (or tanh) before they are
// stored: no pass over memory for the bias or the activation. Tiles are shared among threads (std::thread, not
// OpenMP: a second OpenMP runtime beside PyTorch's would keep spinning threads that slow PyTorch down).
//
// Written for asapbench from the paper's definition of the pixelwise MLP and the parameter layout of
// asapbench.models.asapnet (per tile and layer: bias[c_out], then W[c_in][c_out]); compiled on the user's machine
// with -march=native, so GCC's vector extensions become AVX-512, AVX2 or SSE code.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>
#include <thread>
#include <vector>

#if defined(__AVX512F__)
#define VW 16
#define MR 12
#elif defined(__AVX__)
#define VW 8
#define MR 6
#else
#define VW 4
#define MR 6
#endif
#define ROWS (MR * 16)
#define MAX_LAYERS 16

typedef float vf __attribute__((vector_size(VW * 4)));
typedef float vfu __attribute__((vector_size(VW * 4), aligned(4)));
typedef int32_t vi __attribute__((vector_size(VW * 4)));

static inline vf load(const float *p) { return *(const vfu *)p; }
static inline void store(float *p, vf v) { *(vfu *)p = v; }
static inline vf splat(float x) { return vf{} + x; }

static inline vf activate(vf v, int act) {
    if (act == 1) return v > 0.0f ? v : v * 0.01f;  // LeakyReLU(0.01)
    return v;
}

// tanh(x) = (e - 1) / (e + 1), e = exp(2x) with x clamped to [-9, 9] (tanh(9) = 1 - 3e-8 in float).
// exp(y) = 2^n * p(r), n = round(y / ln 2), r = y - n ln 2 in [-ln2/2, ln2/2], p = Taylor series to r^7.
static inline vf vtanh(vf x) {
    x = x > 9.0f ? splat(9.0f) : x;
    x = x < -9.0f ? splat(-9.0f) : x;
    vf y = x * 2.0f;
    const float magic = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
    vf n = (y * 1.44269504088896341f + magic) - magic;
    vf r = y - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    vf p = splat(1.0f / 5040);
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    vi e = (__builtin_convertvector(n, vi) + 127) << 23;
    vf two_n;
    memcpy(&two_n, &e, sizeof two_n);
    vf ex = p * two_n;
    return (ex - 1.0f) / (ex + 1.0f);
}

// C[rows x N] = act(A[rows x K] @ B[K x N] + bias[N]); N a multiple of VW; A's row stride lda, B's N, C's ldc.
static void layer(int rows, int K, int N, const float *A, int lda, const float *B, const float *bias, float *C,
                  int ldc, int act) {
    int r = 0;
    for (; r + MR <= rows; r += MR) {
        int j = 0;
        for (; j + 2 * VW <= N; j += 2 * VW) {
            vf acc0[MR], acc1[MR];
            const vf b0 = load(bias + j), b1 = load(bias + j + VW);
#pragma GCC unroll 16
            for (int m = 0; m < MR; m++) { acc0[m] = b0; acc1[m] = b1; }
            const float *a = A + (size_t)r * lda;
            for (int k = 0; k < K; k++) {
                const vf w0 = load(B + (size_t)k * N + j), w1 = load(B + (size_t)k * N + j + VW);
#pragma GCC unroll 16
                for (int m = 0; m < MR; m++) {
                    const float am = a[(size_t)m * lda + k];
                    acc0[m] += am * w0;
                    acc1[m] += am * w1;
                }
            }
#pragma GCC unroll 16
            for (int m = 0; m < MR; m++) {
                store(C + (size_t)(r + m) * ldc + j, activate(acc0[m], act));
                store(C + (size_t)(r + m) * ldc + j + VW, activate(acc1[m], act));
            }
        }
        for (; j < N; j += VW) {
            vf acc[MR];
            const vf b0 = load(bias + j);
#pragma GCC unroll 16
            for (int m = 0; m < MR; m++) acc[m] = b0;
            const float *a = A + (size_t)r * lda;
            for (int k = 0; k < K; k++) {
                const vf w0 = load(B + (size_t)k * N + j);
#pragma GCC unroll 16
                for (int m = 0; m < MR; m++) acc[m] += a[(size_t)m * lda + k] * w0;
            }
#pragma GCC unroll 16
            for (int m = 0; m < MR; m++) store(C + (size_t)(r + m) * ldc + j, activate(acc[m], act));
        }
    }
    for (; r < rows; r++) {  // the last rows of a block, one at a time
        const float *a = A + (size_t)r * lda;
        for (int j = 0; j < N; j += VW) {
            vf acc = load(bias + j);
            for (int k = 0; k < K; k++) acc += a[k] * load(B + (size_t)k * N + j);
            store(C + (size_t)r * ldc + j, activate(acc, act));
        }
    }
}

static inline int round_up(int x) { return (x + VW - 1) / VW * VW; }

static float *alloc(size_t floats) { return (float *)aligned_alloc(64, (floats * sizeof(float) + 63) / 64 * 64); }

extern "C" int asapbench_pixelwise_vector_width(void) { return VW; }

// hr [N, c, H, W] with rows contiguous (batch and channel strides hr_sn, hr_sc, in floats); params [T = N*(H/S)*(W/S), P] tile-major (per layer: bias, then W c_in-major);
// pe [S*S, n_pe]; chans[0] = c + n_pe; out [N, chans[n_layers], H, W]. Returns 0, or 1 for bad sizes, 3 out of memory.
extern "C" int asapbench_pixelwise(const float *hr, const float *params, const float *pe, float *out, int n, int c,
                                   int height, int width, int scale, int n_pe, const int *chans, int n_layers,
                                   int threads, long hr_sn, long hr_sc) {
    if (n_layers < 1 || n_layers > MAX_LAYERS || chans[0] != c + n_pe || scale < 1 || threads < 1) return 1;
    const int h = height / scale, w = width / scale, pix = scale * scale;
    const long tiles = (long)n * h * w;
    long per_tile = 0, packed = 0;  // a tile's parameters, and as packed: every layer's columns padded to VW
    int widest = chans[0];
    for (int i = 0; i < n_layers; i++) {
        per_tile += (long)(chans[i] + 1) * chans[i + 1];
        packed += (long)(chans[i] + 1) * round_up(chans[i + 1]);
        widest = round_up(chans[i + 1]) > widest ? round_up(chans[i + 1]) : widest;
    }
    const int k0 = chans[0], co_last = chans[n_layers], n_last = round_up(co_last);
    std::atomic<long> next{0};
    std::atomic<int> status{0};
    auto work = [&]() {
        float *x0 = alloc((size_t)ROWS * k0);
        float *buf[2] = {alloc((size_t)ROWS * widest), alloc((size_t)ROWS * widest)};
        float *wp = alloc(packed);  // the tile's [bias; W] per layer, zero columns up to a multiple of VW
        if (!x0 || !buf[0] || !buf[1] || !wp) {
            status = 3;
        } else {
            memset(wp, 0, sizeof(float) * packed);
            for (long t = next++; t < tiles; t = next++) {
                const long ni = t / ((long)h * w), hi = (t / w) % h, wi = t % w;
                const float *q = params + t * per_tile;
                float *dst = wp;
                for (int i = 0; i < n_layers; i++) {
                    const int co = chans[i + 1], np = round_up(co);
                    for (int k = 0; k <= chans[i]; k++, q += co) memcpy(dst + (size_t)k * np, q, sizeof(float) * co);
                    dst += (size_t)(chans[i] + 1) * np;
                }
                for (int p0 = 0; p0 < pix; p0 += ROWS) {
                    const int rows = pix - p0 < ROWS ? pix - p0 : ROWS;
                    for (int r = 0; r < rows; r++) {  // [labels, PE] of the block's pixels
                        const int a = (p0 + r) / scale, b = (p0 + r) % scale;
                        const float *src = hr + ni * hr_sn + (hi * scale + a) * (long)width + wi * scale + b;
                        float *x = x0 + (size_t)r * k0;
                        for (int ch = 0; ch < c; ch++) x[ch] = src[ch * hr_sc];
                        memcpy(x + c, pe + (size_t)(p0 + r) * n_pe, sizeof(float) * n_pe);
                    }
                    const float *a = x0;
                    int lda = k0;
                    const float *wl = wp;
                    float *y = buf[0];
                    for (int i = 0; i < n_layers; i++) {
                        const int np = round_up(chans[i + 1]);
                        y = buf[i % 2];
                        layer(rows, chans[i], np, a, lda, wl + np, wl, y, np, i < n_layers - 1 ? 1 : 0);
                        a = y;
                        lda = np;
                        wl += (size_t)(chans[i] + 1) * np;
                    }
                    for (int r = 0; r < rows; r++) {  // tanh, and the pixels into the [N, C, H, W] output
                        const int a2 = (p0 + r) / scale, b2 = (p0 + r) % scale;
                        float *o = out + ((ni * co_last) * height + hi * scale + a2) * (long)width + wi * scale + b2;
                        for (int j = 0; j < n_last; j += VW) store(y + (size_t)r * n_last + j, vtanh(load(y + (size_t)r * n_last + j)));
                        for (int ch = 0; ch < co_last; ch++) o[(long)ch * height * width] = y[(size_t)r * n_last + ch];
                    }
                }
            }
        }
        free(x0);
        free(buf[0]);
        free(buf[1]);
        free(wp);
    };
    std::vector<std::thread> pool;
    for (int i = 1; i < threads; i++) pool.emplace_back(work);
    work();
    for (auto &th : pool) th.join();
    return status.load();
}
