"""Numba CUDA kernels of fastnn.cuda.poolnorm (importable without a GPU, so that
tests/test_cuda_poolnorm_compile.py can compile them for the GPU target). Arrays are 1-D
C-contiguous views; fastnn.cuda.poolnorm validates and launches."""
import math

from numba import cuda, float64 as nb_float64

BLOCK = 128          # threads per channel (batch norm) or row (layer norm); a power of two


# ---- kernels -------------------------------------------------------------------------------------

@cuda.jit
def _maxpool_fwd(y, idx, x, total, H, W, OH, OW, kh, kw, sh, sw, ph, pw):
    o = cuda.grid(1)
    if o >= total:
        return
    p, r = o // (OH * OW), o % (OH * OW)
    i, j = r // OW, r % OW
    h0, w0 = max(i * sh - ph, 0), max(j * sw - pw, 0)
    h1, w1 = min(i * sh - ph + kh, H), min(j * sw - pw + kw, W)
    best = x[p * H * W + h0 * W + w0]
    arg = h0 * W + w0
    for a in range(h0, h1):
        for b in range(w0, w1):
            v = x[p * H * W + a * W + b]
            if v > best or v != v:
                best = v
                arg = a * W + b
    y[o] = best
    idx[o] = arg


@cuda.jit
def _maxpool_bwd(dx, dy, idx, planes, HW, OHW):
    p = cuda.grid(1)
    if p >= planes:
        return
    for i in range(HW):
        dx[p * HW + i] = 0
    for o in range(OHW):
        dx[p * HW + idx[p * OHW + o]] += dy[p * OHW + o]


@cuda.jit(device=True)
def _avg_window(i, j, H, W, kh, kw, sh, sw, ph, pw, cip):
    h0, w0 = max(i * sh - ph, 0), max(j * sw - pw, 0)
    h1, w1 = min(i * sh - ph + kh, H), min(j * sw - pw + kw, W)
    div = float(kh * kw) if cip else float((h1 - h0) * (w1 - w0))
    return h0, h1, w0, w1, div


@cuda.jit
def _avgpool_fwd(y, x, total, H, W, OH, OW, kh, kw, sh, sw, ph, pw, cip):
    o = cuda.grid(1)
    if o >= total:
        return
    p, r = o // (OH * OW), o % (OH * OW)
    i, j = r // OW, r % OW
    h0, h1, w0, w1, div = _avg_window(i, j, H, W, kh, kw, sh, sw, ph, pw, cip)
    acc = 0.0
    for a in range(h0, h1):
        for b in range(w0, w1):
            acc += x[p * H * W + a * W + b]
    y[o] = acc / div


@cuda.jit
def _avgpool_bwd(dx, dy, planes, H, W, OH, OW, kh, kw, sh, sw, ph, pw, cip):
    p = cuda.grid(1)
    if p >= planes:
        return
    for i in range(H * W):
        dx[p * H * W + i] = 0
    for i in range(OH):
        for j in range(OW):
            h0, h1, w0, w1, div = _avg_window(i, j, H, W, kh, kw, sh, sw, ph, pw, cip)
            v = dy[p * OH * OW + i * OW + j] / div
            for a in range(h0, h1):
                for b in range(w0, w1):
                    dx[p * H * W + a * W + b] += v


@cuda.jit
def _gap_fwd(y, x, planes, HW):
    p = cuda.grid(1)
    if p < planes:
        acc = 0.0
        for i in range(HW):
            acc += x[p * HW + i]
        y[p] = acc / HW


@cuda.jit
def _gap_bwd(dx, dy, total, HW):
    o = cuda.grid(1)
    if o < total:
        dx[o] = dy[o // HW] / HW


@cuda.jit(device=True)
def _block_sum(shared, t):
    """Tree sum of shared[0:BLOCK] in a fixed order; every thread gets the total."""
    cuda.syncthreads()
    s = BLOCK // 2
    while s > 0:
        if t < s:
            shared[t] += shared[t + s]
        cuda.syncthreads()
        s //= 2
    total = shared[0]
    cuda.syncthreads()
    return total


@cuda.jit
def _bn_fwd(y, smean, sinv, rm, rv, x, g, b, N, C, HW, training, has_running, affine,
            momentum, eps):
    ch = cuda.blockIdx.x
    t = cuda.threadIdx.x
    sh = cuda.shared.array(BLOCK, nb_float64)
    M = N * HW
    if training:
        acc = 0.0
        for k in range(t, M, BLOCK):
            acc += x[((k // HW) * C + ch) * HW + k % HW]
        sh[t] = acc
        mean = _block_sum(sh, t) / M
        acc = 0.0
        for k in range(t, M, BLOCK):
            d = x[((k // HW) * C + ch) * HW + k % HW] - mean
            acc += d * d
        sh[t] = acc
        var = _block_sum(sh, t) / M
        invstd = 1.0 / math.sqrt(var + eps)
        if t == 0 and has_running:
            rm[ch] = (1.0 - momentum) * rm[ch] + momentum * mean
            rv[ch] = (1.0 - momentum) * rv[ch] + momentum * (var * M / (M - 1))
    else:
        mean = nb_float64(rm[ch])
        invstd = 1.0 / math.sqrt(nb_float64(rv[ch]) + eps)
    if t == 0:
        smean[ch] = mean
        sinv[ch] = invstd
    scale = invstd * (nb_float64(g[ch]) if affine else 1.0)
    shift = nb_float64(b[ch]) if affine else 0.0
    for k in range(t, M, BLOCK):
        at = ((k // HW) * C + ch) * HW + k % HW
        y[at] = (x[at] - mean) * scale + shift


@cuda.jit
def _bn_bwd(dx, dw, db, dy, x, smean, sinv, g, N, C, HW, training, affine):
    ch = cuda.blockIdx.x
    t = cuda.threadIdx.x
    sh = cuda.shared.array(BLOCK, nb_float64)
    M = N * HW
    mean = smean[ch]
    invstd = nb_float64(sinv[ch])
    acc = 0.0
    for k in range(t, M, BLOCK):
        acc += dy[((k // HW) * C + ch) * HW + k % HW]
    sh[t] = acc
    sdy = _block_sum(sh, t)
    acc = 0.0
    for k in range(t, M, BLOCK):
        at = ((k // HW) * C + ch) * HW + k % HW
        acc += nb_float64(dy[at]) * nb_float64(x[at] - mean)
    sh[t] = acc
    sdyx = _block_sum(sh, t)
    if t == 0:
        dw[ch] = sdyx * invstd
        db[ch] = sdy
    a = (nb_float64(g[ch]) if affine else 1.0) * invstd
    k1 = -a * invstd * invstd * sdyx / M if training else 0.0
    off = -a * sdy / M if training else 0.0
    for k in range(t, M, BLOCK):
        at = ((k // HW) * C + ch) * HW + k % HW
        dx[at] = dy[at] * a + nb_float64(x[at] - mean) * k1 + off


@cuda.jit
def _ln_fwd(y, smean, srstd, x, w, b, D, affine_w, affine_b, eps):
    r = cuda.blockIdx.x
    t = cuda.threadIdx.x
    sh = cuda.shared.array(BLOCK, nb_float64)
    acc = 0.0
    for j in range(t, D, BLOCK):
        acc += x[r * D + j]
    sh[t] = acc
    mean = _block_sum(sh, t) / D
    acc = 0.0
    for j in range(t, D, BLOCK):
        d = x[r * D + j] - mean
        acc += d * d
    sh[t] = acc
    rstd = 1.0 / math.sqrt(_block_sum(sh, t) / D + eps)
    if t == 0:
        smean[r] = mean
        srstd[r] = rstd
    for j in range(t, D, BLOCK):
        v = (x[r * D + j] - mean) * rstd
        if affine_w:
            v = v * w[j]
        if affine_b:
            v = v + b[j]
        y[r * D + j] = v


@cuda.jit
def _ln_bwd_rows(dx, dy, x, smean, srstd, w, D, affine_w):
    r = cuda.blockIdx.x
    t = cuda.threadIdx.x
    sh = cuda.shared.array(BLOCK, nb_float64)
    mu, rs = nb_float64(smean[r]), nb_float64(srstd[r])
    a1 = 0.0
    for j in range(t, D, BLOCK):
        a1 += nb_float64(dy[r * D + j]) * (nb_float64(w[j]) if affine_w else 1.0)
    sh[t] = a1
    mg = _block_sum(sh, t) / D
    a2 = 0.0
    for j in range(t, D, BLOCK):
        gj = nb_float64(dy[r * D + j]) * (nb_float64(w[j]) if affine_w else 1.0)
        a2 += gj * (x[r * D + j] - mu) * rs
    sh[t] = a2
    mgx = _block_sum(sh, t) / D
    for j in range(t, D, BLOCK):
        gj = nb_float64(dy[r * D + j]) * (nb_float64(w[j]) if affine_w else 1.0)
        dx[r * D + j] = rs * (gj - mg - (x[r * D + j] - mu) * rs * mgx)


@cuda.jit
def _ln_bwd_cols(dw, db, dy, x, smean, srstd, rows, D):
    j = cuda.grid(1)
    if j >= D:
        return
    aw = 0.0
    ab = 0.0
    for r in range(rows):
        ab += dy[r * D + j]
        aw += nb_float64(dy[r * D + j]) * (x[r * D + j] - nb_float64(smean[r])) * srstd[r]
    dw[j] = aw
    db[j] = ab
