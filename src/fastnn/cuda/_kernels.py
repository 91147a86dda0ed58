"""Numba CUDA kernels of fastnn.cuda, built once per dtype by `kernels(dtype)`.

The formulas are those of the C reference kernels (csrc/ref/*.inc). Each kernel is written
once and built for float32 and float64 by a factory: the constants it uses are numpy
scalars of the dtype captured in the closure, so a float32 kernel computes in float32 (a
Python float literal would promote the arithmetic to float64). Compile-time switches
(GEMM layouts and epilogue) are closure constants too: Numba prunes the branches they
disable before typing.

Conventions: arrays arrive validated by fastnn.cuda.ops (shapes, dtypes, no overlap).
Element-wise and optimizer kernels take 1-D arrays and loop grid-stride. Row kernels
(softmax, cross-entropy) give each row 32 threads and ROWS rows to a block. Reductions
(loss values, bias gradients) use a fixed blocking, so results do not depend on timing:
each block writes its partial sums to `work`, and the last block to finish (counted with
one atomic in work[0]) adds them in a fixed order. Per-item loss values are computed in the
dtype; loss totals are accumulated in float64.

The simulator has no warp shuffles, so reductions go through shared memory.
"""
import math

import numpy as np
from numba import config, cuda, float64 as nb_float64, int32 as nb_int32
from numba.np import numpy_support


def _inline(fn):
    """A device function inlined into its callers (so that its local arrays and branches on
    constants fold away); the simulator knows no `forceinline`."""
    if config.ENABLE_CUDASIM:
        return cuda.jit(device=True)(fn)
    return cuda.jit(device=True, forceinline=True)(fn)


# ---- compile-time sizes ----------------------------------------------------------------------

# GEMM: a block of TY x TX threads computes a BM x BN tile of C; each thread computes TM x TN
# outputs strided by TY (rows) and TX (columns), so that its shared-memory reads are broadcast
# or consecutive and its global writes coalesce. K advances BK at a time through two
# shared-memory tiles (padded by one column against bank conflicts on the transposed stores).
BM, BN, BK = 64, 64, 16
TM, TN = 4, 4
TY, TX = BM // TM, BN // TN
GEMM_THREADS = TX * TY            # 256
BM_PAD, BN_PAD = BM + 1, BN + 1   # shared tile row lengths (shapes must be plain constants)

THREADS = 256                     # element-wise, reduction and optimizer blocks
MAX_BLOCKS = 2048                 # grid-stride cap for element-wise kernels
RED_BLOCKS = 1024                 # cap for kernels that write one partial sum per block
LANES, ROWS = 32, 8               # row kernels: block (LANES, ROWS), one row per 32 threads
SHD = THREADS + THREADS // LANES  # float64 scratch of block_sum2 per summed quantity
WORK_SIZE = 2 + 2 * RED_BLOCKS    # work: [block counter, weight sum, 2 partials per block]

# activation codes (as fastnn_act in csrc/include/fastnn/fastnn.h)
IDENTITY, RELU, LEAKY_RELU, SIGMOID, TANH, GELU, GELU_TANH, SILU, SOFTPLUS = range(9)
ACTIVATIONS = {"identity": IDENTITY, "relu": RELU, "leaky_relu": LEAKY_RELU,
               "sigmoid": SIGMOID, "tanh": TANH, "gelu": GELU, "gelu_tanh": GELU_TANH,
               "silu": SILU, "softplus": SOFTPLUS}

# element-wise loss kinds
MSE, L1, HUBER, BCE = range(4)

# GEMM epilogues
PLAIN, BIAS_ACT, ACT, ACT_BACKWARD, ROWSUM = range(5)


def kernels(dtype):
    """The kernels for float32 or float64 (built on first use, then cached)."""
    dtype = np.dtype(dtype)
    if dtype not in _cache:
        _cache[dtype] = _Kernels(dtype)
    return _cache[dtype]


_cache = {}


class _Kernels:
    """Element-wise, row, reduction and optimizer kernels for one dtype, plus gemm(...)."""

    def __init__(self, dtype):
        self.dtype = dtype
        self._gemms = {}
        _build(self, dtype.type, numpy_support.from_dtype(dtype))

    def gemm(self, ta, tb, epilogue):
        """GEMM kernel for op(A) = A or A.T (ta), op(B) likewise (tb) and an epilogue."""
        key = (bool(ta), bool(tb), epilogue)
        if key not in self._gemms:
            self._gemms[key] = _build_gemm(self.dtype.type,
                                           numpy_support.from_dtype(self.dtype), *key)
        return self._gemms[key]


# ---- per-dtype scalar functions and element-wise kernels -------------------------------------

def _build(ns, T, nbT):
    ZERO, ONE, TWO, HALF = T(0), T(1), T(2), T(0.5)
    SQRT1_2 = T(math.sqrt(0.5))
    INV_SQRT_2PI = T(1.0 / math.sqrt(2.0 * math.pi))
    GELU_K = T(math.sqrt(2.0 / math.pi))
    GELU_C = T(0.044715)
    GELU_C3 = T(3 * 0.044715)
    NAN = T(np.nan)
    F64_0 = np.float64(0)                   # float64 accumulators (also in the simulator)
    NEG_INF = T(-np.inf)

    @_inline
    def sigmoid2(u):
        """sigmoid(2u) without overflowing exp (the simulator's math.exp raises)."""
        if u >= ZERO:
            return ONE / (ONE + math.exp(-TWO * u))
        e = math.exp(TWO * u)
        return e / (ONE + e)

    @_inline
    def act_f(code, x, p, p2):
        """f(x) for activation `code` (p, p2: negative slope, or softplus beta, threshold)."""
        if code == RELU:
            return ZERO if x < ZERO else x            # NaN passes through
        if code == LEAKY_RELU:
            return x if x > ZERO else x * p
        if code == SIGMOID:
            return ONE / (ONE + math.exp(-x))
        if code == TANH:
            return math.tanh(x)
        if code == GELU:
            return HALF * x * math.erfc(-x * SQRT1_2)       # keeps the negative tail
        if code == GELU_TANH:                               # 1 + tanh(u) = 2 sigmoid(2u)
            return x * sigmoid2(GELU_K * (x + GELU_C * x * x * x))
        if code == SILU:
            return x / (ONE + math.exp(-x))
        if code == SOFTPLUS:
            bx = p * x
            return x if bx > p2 else math.log1p(math.exp(bx)) / p
        return x

    @_inline
    def act_df(code, dy, x, p, p2):
        """dy * f'(x)."""
        if code == RELU:
            return ZERO if x <= ZERO else dy          # as PyTorch: a NaN x passes dy
        if code == LEAKY_RELU:
            return dy if x > ZERO else dy * p
        if code == SIGMOID:
            s = ONE / (ONE + math.exp(-x))
            return dy * s * (ONE - s)
        if code == TANH:
            t = math.tanh(x)
            return dy * (ONE - t * t)
        if code == GELU:
            cdf = HALF * math.erfc(-x * SQRT1_2)
            pdf = math.exp(-HALF * x * x) * INV_SQRT_2PI
            return dy * (cdf + x * pdf)
        if code == GELU_TANH:
            x2 = x * x
            s = sigmoid2(GELU_K * (x + GELU_C * x2 * x))
            du = GELU_K * (ONE + GELU_C3 * x2)
            return dy * (s + TWO * x * s * (ONE - s) * du)
        if code == SILU:
            s = ONE / (ONE + math.exp(-x))
            return dy * s * (ONE + x * (ONE - s))
        if code == SOFTPLUS:
            bx = p * x
            if bx > p2:
                return dy
            z = math.exp(bx)
            return dy * z / (z + ONE)
        return dy

    ns.act_f, ns.act_df = act_f, act_df

    @cuda.jit
    def act_forward(y, x, code, p, p2):
        for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            y[i] = act_f(code, x[i], p, p2)

    @cuda.jit
    def act_backward(dx, dy, x, code, p, p2):
        for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            dx[i] = act_df(code, dy[i], x[i], p, p2)

    @cuda.jit
    def bias_add(y, x, b):
        """y[r, c] = x[r, c] + b[c] over flat indices of the (rows, cols) arrays."""
        cols = x.shape[1]
        for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            r = i // cols
            c = i - r * cols
            y[r, c] = x[r, c] + b[c]

    @cuda.jit
    def bias_grad(db, dy, beta):
        """db[c] = sum_r dy[r, c] (+ beta db[c]): block (LANES, LANES) per strip of LANES
        columns; thread row ty sums rows ty, ty + LANES, ... in order, then row 0 adds the
        LANES partial sums in order."""
        sh = cuda.shared.array((LANES, LANES), nbT)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        c = cuda.blockIdx.x * LANES + tx
        rows, cols = dy.shape
        acc = ZERO
        if c < cols:
            for r in range(ty, rows, LANES):
                acc += dy[r, c]
        sh[ty, tx] = acc
        cuda.syncthreads()
        if ty == 0 and c < cols:
            acc = sh[0, tx]
            for q in range(1, LANES):
                acc += sh[q, tx]
            db[c] = acc if beta == ZERO else acc + beta * db[c]

    ns.act_forward, ns.act_backward = act_forward, act_backward
    ns.bias_add, ns.bias_grad = bias_add, bias_grad

    # ---- row kernels: 32 threads per row, ROWS rows per block ---------------------------------

    @_inline
    def row_reduce(sh, v, is_max):
        """Sum (or NaN-propagating max) of v over the 32 threads of this row, added in lane
        order by every lane (shared-memory broadcasts; two barriers). Every thread of the
        block must call it."""
        w = cuda.threadIdx.y
        sh[w, cuda.threadIdx.x] = v
        cuda.syncthreads()
        r = sh[w, 0]
        for q in range(1, LANES):
            b = sh[w, q]
            if is_max:
                r = r if (r > b or r != r) else b
            else:
                r += b
        cuda.syncthreads()
        return r

    @cuda.jit
    def softmax(y, x, log_):
        sh = cuda.shared.array((ROWS, LANES), nbT)
        lane = cuda.threadIdx.x
        rows, cols = x.shape
        for r0 in range(cuda.blockIdx.x * ROWS, rows, cuda.gridDim.x * ROWS):
            r = r0 + cuda.threadIdx.y
            ok = r < rows
            m = NEG_INF
            if ok:
                for c in range(lane, cols, LANES):
                    v = x[r, c]
                    m = v if (v > m or v != v) else m
            m = row_reduce(sh, m, True)
            s = ZERO
            if ok:
                for c in range(lane, cols, LANES):
                    s += math.exp(x[r, c] - m)
            s = row_reduce(sh, s, False)
            if ok:
                if log_:
                    ls = math.log(s)                # (x - max) - log(sum), see C
                    for c in range(lane, cols, LANES):
                        y[r, c] = (x[r, c] - m) - ls
                else:
                    inv = ONE / s
                    for c in range(lane, cols, LANES):
                        y[r, c] = math.exp(x[r, c] - m) * inv

    @cuda.jit
    def softmax_backward(dx, dy, y, log_):
        sh = cuda.shared.array((ROWS, LANES), nbT)
        lane = cuda.threadIdx.x
        rows, cols = y.shape
        for r0 in range(cuda.blockIdx.x * ROWS, rows, cuda.gridDim.x * ROWS):
            r = r0 + cuda.threadIdx.y
            ok = r < rows
            s = ZERO
            if ok:
                for c in range(lane, cols, LANES):
                    s += dy[r, c] if log_ else dy[r, c] * y[r, c]
            s = row_reduce(sh, s, False)
            if ok:
                for c in range(lane, cols, LANES):
                    if log_:
                        dx[r, c] = dy[r, c] - math.exp(y[r, c]) * s
                    else:
                        dx[r, c] = y[r, c] * (dy[r, c] - s)

    ns.softmax, ns.softmax_backward = softmax, softmax_backward

    # ---- reductions to one value -------------------------------------------------------------

    @_inline
    def block_sum2(shd, a, b, tid):
        """Sums of a and b (float64) over the block's THREADS threads, in shd[0, 0] and
        shd[1, 0]: groups of LANES added in order by one thread each, then the group sums."""
        shd[0, tid] = a
        shd[1, tid] = b
        cuda.syncthreads()
        if tid < THREADS // LANES:
            sa = shd[0, tid * LANES]
            sb = shd[1, tid * LANES]
            for q in range(tid * LANES + 1, (tid + 1) * LANES):
                sa += shd[0, q]
                sb += shd[1, q]
            shd[0, THREADS + tid] = sa
            shd[1, THREADS + tid] = sb
        cuda.syncthreads()
        if tid == 0:
            sa = shd[0, THREADS]
            sb = shd[1, THREADS]
            for q in range(THREADS + 1, THREADS + THREADS // LANES):
                sa += shd[0, q]
                sb += shd[1, q]
            shd[0, 0] = sa
            shd[1, 0] = sb
        cuda.syncthreads()

    @_inline
    def finish(a, b, tid, work, value, mean):
        """Every thread's partial loss sum a and weight sum b (float64) -> value[0] =
        sum a / sum b (mean) or sum a, summed per block then by the last block in order."""
        shd = cuda.shared.array((2, SHD), nb_float64)
        last = cuda.shared.array(1, nb_int32)
        block_sum2(shd, a, b, tid)
        nblocks = cuda.gridDim.x
        if tid == 0:
            work[2 + 2 * cuda.blockIdx.x] = shd[0, 0]
            work[3 + 2 * cuda.blockIdx.x] = shd[1, 0]
            cuda.threadfence()
            last[0] = 1 if cuda.atomic.add(work, 0, 1.0) == nblocks - 1 else 0
        cuda.syncthreads()
        if last[0] == 1:
            a = F64_0
            b = F64_0
            for q in range(tid, nblocks, THREADS):
                a += work[2 + 2 * q]
                b += work[3 + 2 * q]
            block_sum2(shd, a, b, tid)
            if tid == 0:
                value[0] = shd[0, 0] / shd[1, 0] if mean else shd[0, 0]
                work[0] = 0.0

    # ---- element-wise losses: MSE, L1, Huber, BCE with logits ----------------------------------

    @_inline
    def loss_body(P, Tg, G, L, GO, PW, value, work, kind, delta, scale, cols,
                  want_value, want_grad, want_items, has_go, has_pw, mean):
        """Per item i: loss l and gradient g of `kind`; G[i] = g * (GO[i] if has_go else
        scale), L[i] = l, value = reduced sum of l (see finish)."""
        tid = cuda.threadIdx.x
        a = F64_0
        b = F64_0
        for i in range(cuda.grid(1), P.size, cuda.gridsize(1)):
            if kind == BCE:
                z = P[i]
                t = Tg[i]
                pw = PW[i % cols] if has_pw else ONE
                lw = ONE + (pw - ONE) * t
                # as in C: a zero coefficient times an infinite logit counts as 0
                cz = (ONE - t) if z >= ZERO else -pw * t
                lin = ZERO if cz == ZERO else cz * z
                l = lin + lw * math.log1p(math.exp(-abs(z)))
                if z != z:
                    l = z
                if z >= ZERO:
                    e = math.exp(-z)
                    sig_neg = e / (ONE + e)
                else:
                    sig_neg = ONE / (ONE + math.exp(z))
                g = (ONE - t) - lw * sig_neg
            else:
                d = P[i] - Tg[i]
                ad = abs(d)
                if kind == MSE:
                    l = d * d
                    g = TWO * d
                elif kind == L1:
                    l = ad
                    g = ONE if d > ZERO else (-ONE if d < ZERO else d)   # NaN stays NaN
                else:
                    l = HALF * d * d if ad < delta else delta * (ad - HALF * delta)
                    g = -delta if d < -delta else (delta if d > delta else d)
            a += l
            b += 1.0
            if want_items:
                L[i] = l
            if want_grad:
                G[i] = g * GO[i] if has_go else g * scale
        if want_value:
            finish(a, b, tid, work, value, mean)

    @cuda.jit
    def loss(P, Tg, G, value, work, kind, delta, scale, want_value, want_grad, mean):
        """The training path: value and/or gradient, no per-item arrays, no pos_weight."""
        loss_body(P, Tg, G, P, P, P, value, work, kind, delta, scale, 1,
                  want_value, want_grad, False, False, False, mean)

    @cuda.jit
    def loss_full(P, Tg, G, L, GO, PW, value, work, kind, delta, scale, cols,
                  want_value, want_grad, want_items, has_go, has_pw, mean):
        loss_body(P, Tg, G, L, GO, PW, value, work, kind, delta, scale, cols,
                  want_value, want_grad, want_items, has_go, has_pw, mean)

    ns.loss, ns.loss_full = loss, loss_full

    # ---- softmax cross-entropy: value and gradient in one pass -------------------------------

    @_inline
    def ce_body(Z, Y, W, G, L, GO, value, work, eps, scale, want_value, want_grad,
                want_rows, has_w, has_go, scale_from_work, mean):
        """Row r: l = (1 - eps) w[y] (lse - z[y]) + eps / C (sum_c w[c] lse - sum_c w[c] z[c]);
        dl/dz[c] = p[c] ((1 - eps) w[y] + eps / C sum w) - eps / C w[c] - (1 - eps) w[y] [c == y].
        A label outside [0, C) gives NaN loss and gradient for its row (never a wild read)."""
        sh = cuda.shared.array((ROWS, LANES), nbT)
        shd = cuda.shared.array((2, SHD), nb_float64)
        lane, w = cuda.threadIdx.x, cuda.threadIdx.y
        tid = w * LANES + lane
        rows, cols = Z.shape
        C = T(cols)
        if scale_from_work:                 # 'mean' with class weights: 1 / sum_r w[y_r]
            scale = T(1.0 / work[1]) if work[1] != 0.0 else NAN
        wtot = C                            # sum_c w[c]
        if has_w:
            acc = F64_0
            for c in range(tid, cols, THREADS):
                acc += W[c]
            block_sum2(shd, acc, 0.0, tid)
            wtot = T(shd[0, 0])
            cuda.syncthreads()
        a = F64_0
        b = F64_0
        for r0 in range(cuda.blockIdx.x * ROWS, rows, cuda.gridDim.x * ROWS):
            r = r0 + w
            ok = r < rows
            y = Y[r] if ok else 0
            bad = y < 0 or y >= cols
            m = NEG_INF
            if ok:
                for c in range(lane, cols, LANES):
                    v = Z[r, c]
                    m = v if (v > m or v != v) else m
            m = row_reduce(sh, m, True)
            se = ZERO
            wz = ZERO
            if ok:
                for c in range(lane, cols, LANES):
                    se += math.exp(Z[r, c] - m)
                    if eps > ZERO:
                        wz += (W[c] if has_w else ONE) * (m - Z[r, c])
            se = row_reduce(sh, se, False)
            if eps > ZERO:
                wz = row_reduce(sh, wz, False)
            if ok:
                lse = math.log(se)          # relative to the max m, as in C
                if bad:
                    wy = NAN
                    l = NAN
                else:
                    wy = W[y] if has_w else ONE
                    l = (ONE - eps) * wy * ((m - Z[r, y]) + lse)
                    if eps > ZERO:
                        l += eps / C * (wz + wtot * lse)
                if lane == 0:
                    a += l
                    b += wy
                    if want_rows:
                        L[r] = l
                if want_grad:
                    coef = (ONE - eps) * wy + eps / C * wtot
                    s = GO[r] if has_go else scale
                    for c in range(lane, cols, LANES):
                        g = math.exp((Z[r, c] - m) - lse) * coef
                        if eps > ZERO:
                            g -= eps / C * (W[c] if has_w else ONE)
                        if c == y:
                            g -= (ONE - eps) * wy
                        G[r, c] = s * g
        if want_value:
            finish(a, b, tid, work, value, mean)

    @cuda.jit
    def cross_entropy(Z, Y, G, value, work, eps, scale, want_value, want_grad, mean):
        """The training path: no class weights, no per-row arrays."""
        ce_body(Z, Y, Z[0], G, Z[0], Z[0], value, work, eps, scale, want_value, want_grad,
                False, False, False, False, mean)

    @cuda.jit
    def cross_entropy_full(Z, Y, W, G, L, GO, value, work, eps, scale, want_value, want_grad,
                           want_rows, has_w, has_go, scale_from_work, mean):
        ce_body(Z, Y, W, G, L, GO, value, work, eps, scale, want_value, want_grad,
                want_rows, has_w, has_go, scale_from_work, mean)

    @cuda.jit
    def label_weight_sum(Y, W, work):
        """work[1] = sum_r W[Y[r]] over valid labels (one block): the 'mean' divisor."""
        shd = cuda.shared.array((2, SHD), nb_float64)
        tid = cuda.threadIdx.x
        cols = W.size
        acc = F64_0
        for r in range(tid, Y.size, THREADS):
            y = Y[r]
            if y >= 0 and y < cols:
                acc += W[y]
        block_sum2(shd, acc, 0.0, tid)
        if tid == 0:
            work[1] = shd[0, 0]

    ns.cross_entropy, ns.cross_entropy_full = cross_entropy, cross_entropy_full
    ns.label_weight_sum = label_weight_sum

    # ---- optimizers over a flat buffer (PyTorch's single-tensor formulas, as csrc/ref) -------

    @cuda.jit
    def sgd(p, g, buf, lr, mu, damp, wd, nesterov, maximize, first):
        for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
            d = -g[i] if maximize else g[i]
            if wd != ZERO:
                d = d + wd * p[i]
            if mu != ZERO:
                bi = d if first else mu * buf[i] + (ONE - damp) * d
                buf[i] = bi
                d = d + mu * bi if nesterov else bi
            p[i] = p[i] - lr * d

    @cuda.jit
    def adam(p, g, m, v, vmax, lr, b1, b2, eps, wd, decoupled, amsgrad, maximize, step_size,
             bc2_sqrt):
        for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
            gi = -g[i] if maximize else g[i]
            pi = p[i]
            if wd != ZERO:
                if decoupled:
                    pi = pi * (ONE - lr * wd)
                else:
                    gi = gi + wd * pi
            mi = m[i] + (ONE - b1) * (gi - m[i])
            vi = v[i] * b2 + (ONE - b2) * gi * gi
            m[i] = mi
            v[i] = vi
            if amsgrad:
                vi = vmax[i] if vmax[i] > vi else vi
                vmax[i] = vi
            denom = math.sqrt(vi) / bc2_sqrt + eps
            p[i] = pi + (-step_size) * (mi / denom)

    @cuda.jit
    def rmsprop(p, g, sq, buf, ga, lr, alpha, eps, wd, mu, centered, maximize):
        for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
            gi = -g[i] if maximize else g[i]
            if wd != ZERO:
                gi = gi + wd * p[i]
            s = sq[i] * alpha + (ONE - alpha) * gi * gi
            sq[i] = s
            if centered:
                a = ga[i] + (ONE - alpha) * (gi - ga[i])
                ga[i] = a
                v = s - a * a               # rounding can make it negative
                avg = math.sqrt(v if v > ZERO else ZERO)
            else:
                avg = math.sqrt(s)
            avg = avg + eps
            if mu > ZERO:
                bi = buf[i] * mu + gi / avg
                buf[i] = bi
                p[i] = p[i] + (-lr) * bi
            else:
                p[i] = p[i] + (-lr) * (gi / avg)

    @cuda.jit
    def adagrad(p, g, ssum, clr, wd, eps, maximize):
        for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
            gi = -g[i] if maximize else g[i]
            if wd != ZERO:
                gi = gi + wd * p[i]
            s = ssum[i] + gi * gi
            ssum[i] = s
            p[i] = p[i] + (-clr) * (gi / (math.sqrt(s) + eps))

    @cuda.jit
    def copy(y, x):
        """y[i] = x[i]: the bandwidth yardstick of benchmarks/bench_cuda.py."""
        for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            y[i] = x[i]

    @cuda.jit
    def epilogue(c, b, x, kind, code, p, p2):
        """The GEMM epilogues applied to a product already in c (rows, cols), any row stride:
        BIAS_ACT c = act(c + b[col]); ACT c = act(c); ACT_BACKWARD c = c * act'(x) (x like
        c). b and x are ignored where the kind does not use them."""
        cols = c.shape[1]
        for i in range(cuda.grid(1), c.size, cuda.gridsize(1)):
            r = i // cols
            j = i - r * cols
            v = c[r, j]
            if kind == BIAS_ACT:
                c[r, j] = act_f(code, v + b[j], p, p2)
            elif kind == ACT:
                c[r, j] = act_f(code, v, p, p2)
            else:
                c[r, j] = act_df(code, v, x[r, j], p, p2)

    ns.sgd, ns.adam, ns.rmsprop, ns.adagrad, ns.copy = sgd, adam, rmsprop, adagrad, copy
    ns.epilogue = epilogue


# ---- GEMM ------------------------------------------------------------------------------------

def _build_gemm(T, nbT, TA, TB, EPI):
    """C = epilogue(alpha op(A) @ op(B) + beta C). A and B are passed as stored: with TA the
    stored array is (K, M) and op(A) its transpose (likewise TB: (N, K)); the tile loads are
    laid out so that consecutive threads read consecutive addresses in either case.

    Epilogues: PLAIN; BIAS_ACT c = act(c + bias[j]); ACT c = act(c); ACT_BACKWARD
    c = c * act'(X[i, j]); ROWSUM also D[i] = sum_k op(A)[i, k] (+ dbeta D[i]), summed in k
    order by the blocks of the first block column (the bias gradient next to dW = dZ^T X).
    """
    ZERO = T(0)
    ns = kernels(np.dtype(T))
    act_f, act_df = ns.act_f, ns.act_df
    A_LOADS = BM * BK // GEMM_THREADS
    B_LOADS = BK * BN // GEMM_THREADS

    @_inline
    def body(A, B, C, E, alpha, beta, act, p, p2):
        As = cuda.shared.array((BK, BM_PAD), nbT)     # As[kk, ii] = op(A)[i0 + ii, k0 + kk]
        Bs = cuda.shared.array((BK, BN_PAD), nbT)     # Bs[kk, jj] = op(B)[k0 + kk, j0 + jj]
        acc = cuda.local.array((TM, TN), nbT)
        ar = cuda.local.array(TM, nbT)
        br = cuda.local.array(TN, nbT)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        tid = ty * TX + tx
        i0 = cuda.blockIdx.y * BM
        j0 = cuda.blockIdx.x * BN
        M, N = C.shape
        K = A.shape[0] if TA else A.shape[1]
        rowsum = EPI == ROWSUM and cuda.blockIdx.x == 0 and tid < BM
        rs = ZERO
        for r in range(TM):
            for c in range(TN):
                acc[r, c] = ZERO
        for k0 in range(0, K, BK):
            for q in range(A_LOADS):
                e = tid + q * GEMM_THREADS
                if TA:                      # stored (K, M): consecutive threads along i
                    ii = e % BM
                    kk = e // BM
                else:                       # stored (M, K): consecutive threads along k
                    kk = e % BK
                    ii = e // BK
                gi = i0 + ii
                gk = k0 + kk
                v = ZERO
                if gi < M and gk < K:
                    v = A[gk, gi] if TA else A[gi, gk]
                As[kk, ii] = v
            for q in range(B_LOADS):
                e = tid + q * GEMM_THREADS
                if TB:                      # stored (N, K): consecutive threads along k
                    kk = e % BK
                    jj = e // BK
                else:                       # stored (K, N): consecutive threads along j
                    jj = e % BN
                    kk = e // BN
                gj = j0 + jj
                gk = k0 + kk
                v = ZERO
                if gj < N and gk < K:
                    v = B[gj, gk] if TB else B[gk, gj]
                Bs[kk, jj] = v
            cuda.syncthreads()
            if rowsum:
                for kk in range(BK):
                    rs += As[kk, tid]
            for kk in range(BK):
                for r in range(TM):
                    ar[r] = As[kk, ty + r * TY]
                for c in range(TN):
                    br[c] = Bs[kk, tx + c * TX]
                for r in range(TM):
                    for c in range(TN):
                        acc[r, c] += ar[r] * br[c]
            cuda.syncthreads()
        for r in range(TM):
            i = i0 + ty + r * TY
            if i < M:
                for c in range(TN):
                    j = j0 + tx + c * TX
                    if j < N:
                        v = alpha * acc[r, c]
                        if beta != ZERO:              # beta == 0 never reads C (as BLAS)
                            v += beta * C[i, j]
                        if EPI == BIAS_ACT:
                            v = act_f(act, v + E[j], p, p2)
                        elif EPI == ACT:
                            v = act_f(act, v, p, p2)
                        elif EPI == ACT_BACKWARD:
                            v = act_df(act, v, E[i, j], p, p2)
                        C[i, j] = v
        if rowsum and i0 + tid < M:
            # E is D here and p is dbeta
            E[i0 + tid] = rs if p == ZERO else rs + p * E[i0 + tid]

    if EPI == PLAIN:
        @cuda.jit
        def gemm(A, B, C, alpha, beta):
            body(A, B, C, C, alpha, beta, 0, alpha, alpha)
    elif EPI == ACT:
        @cuda.jit
        def gemm(A, B, C, alpha, beta, act, p, p2):
            body(A, B, C, C, alpha, beta, act, p, p2)
    elif EPI == ROWSUM:
        @cuda.jit
        def gemm(A, B, C, D, alpha, beta, dbeta):
            body(A, B, C, D, alpha, beta, 0, dbeta, dbeta)
    else:                                   # BIAS_ACT (E = bias) or ACT_BACKWARD (E = X)
        @cuda.jit
        def gemm(A, B, C, E, alpha, beta, act, p, p2):
            body(A, B, C, E, alpha, beta, act, p, p2)
    return gemm
