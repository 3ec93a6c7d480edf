"""Triton backend of ``tttgraph::ttt_mlp``: portable forward and backward kernels (see README.md, "Triton backend").

Shapes (the op's canonical layout):
    q, k, v: [B, H, T, D]    eta: [B, H, T]    ln_weight, ln_bias: [H, D]
    w1: [H, D, F]   b1: [H, F]   w2: [H, F, D]   b2: [H, D]      out: [B, H, T, D] (dtype of q)

One program per (batch, head) walks the mini-batches in order. The fp32 inner state lives in a
per-program scratch buffer (L2-resident at real sizes) that is read and written in tiles of BF
columns of F, so any F that is a multiple of 16 fits; D is one tile (padded to a power of two).
Matmul operands are bf16 for bf16/fp16 inputs (split into bf16 hi + lo for the three products of the
state update that feed the recurrence, see _mmx) and fp32 (IEEE) for fp32 inputs; the inner state,
LayerNorm statistics and every accumulation are fp32.

Importing this module imports Triton when it is installed (the backend registry imports backend
modules only when asked, so ``import tttgraph`` does not). On the CPU the kernels run under
``TRITON_INTERPRET=1`` (tests only).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

# backend="auto" runs the Triton backward for bf16/fp16 inputs. v4 (README.md, "Triton backend") fixed
# the bf16 drift:
# Z1, Z2 and G_z1 of the forward's state update, which feed the inner-state recurrence, are computed
# with bf16 hi/lo split operands (_mmx). On an H100 at B=1, H=48, D=64, F=256 with the benchmark of
# record's inputs, all ten bf16 gradients are within 4.3e-3 (relative L2 against the float32
# reference) at T = 18,048 and 101,376 (v3: 6.9e-2 to 2.7e-1, from two heads where the scan is
# ill-conditioned), and the backward takes 1,358 ms at T = 351,168 (v3: 1,359 ms). (With float32
# inputs it is exact to 1.3e-5 but slower than the reference backward: 2.4 s vs 1.1 s at 18,048, so
# auto takes the reference backward there.)


def auto_backward_reason(q, *args) -> str | None:
    """Why backend="auto" should not run this backward (None: run it). Checked after unsupported_reason."""
    if q.dtype == torch.float32:
        return ("with float32 inputs the reference backward is faster (1.1 s vs 2.4 s at T=18,048, "
                "H=48 on an H100)")
    return None

MIN_MINI_BATCH = 16
MAX_MINI_BATCH = 128
MAX_HEAD_DIM = 128  # D is held as one register tile per row block
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Tests set this to fill every output and scratch buffer with NaN before the kernels run, so that
# an element the kernels never write (or a scratch read before its write) shows up as NaN.
POISON_BUFFERS = False
# Benchmarks set this to try launch configurations, per kernel: {"fwd": {"BF": 32, "num_warps": 4}, "bwd": ...}.
CONFIG_OVERRIDE: dict[str, dict] = {}


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unsupported_reason(q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2, mini_batch_size: int, eps: float):
    """None if the Triton kernels can run these inputs here, else a readable reason."""
    if triton is None:
        return "the package 'triton' is not installed"
    dim, hidden = q.shape[-1], w1.shape[-1]
    if q.device.type == "cpu" and not _interpreting():
        return "tensors are on the CPU and TRITON_INTERPRET=1 is not set (the interpreter is for tests)"
    if q.device.type not in ("cpu", "cuda"):
        return f"device {q.device} is not a CUDA device"
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {q.dtype} is not one of float32, bfloat16, float16"
    if dim % 16 or dim > MAX_HEAD_DIM:
        return f"D={dim} is not a multiple of 16 in 16..{MAX_HEAD_DIM}"
    if hidden % 16:
        return f"F={hidden} is not a multiple of 16"
    if q.device.type == "cuda" and hidden % 64:
        # F tiles of 32 or 16 columns pass under the interpreter but hit an illegal memory access on
        # an H100 (Triton 3.6, seen 2026-11-25; cause not yet found): only BF = 64 runs on GPUs.
        return f"F={hidden} is not a multiple of 64 (F tiles below 64 fail on GPUs, see kernels/ttt_mlp/README.md)"
    if not MIN_MINI_BATCH <= mini_batch_size <= MAX_MINI_BATCH:
        return f"mini_batch_size={mini_batch_size} is outside {MIN_MINI_BATCH}..{MAX_MINI_BATCH}"
    return None


try:
    import triton
    import triton.language as tl
    from triton.runtime.errors import OutOfResources
except ImportError:  # unsupported_reason says so; the kernels below are then never defined
    triton = None

# Module-level definitions: the interpreter re-executes kernels against their module's globals.
if triton is not None:

    @triton.jit
    def _mm(a, b, LOWP: tl.constexpr):
        # LOWP 1: bf16 operands, fp32 accumulate (the fast path). 0: IEEE fp32 (fp32 inputs).
        # 2: bf16-rounded operands in an fp32 dot, for the interpreter, whose bf16 dot is wrong.
        if LOWP == 1:
            c = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
        elif LOWP == 2:
            c = tl.dot(a.to(tl.bfloat16).to(tl.float32), b.to(tl.bfloat16).to(tl.float32))
        else:
            c = tl.dot(a, b, input_precision="ieee")
        return c

    @triton.jit
    def _lo(x, xh, LOWP: tl.constexpr):
        """The bf16 low part x - xh of x (xh = x in bf16): hi + lo carries ~16 bits of x's mantissa."""
        lo = (x - xh.to(tl.float32)).to(tl.bfloat16)
        if LOWP == 2:
            lo = lo.to(tl.float32)
        return lo

    @triton.jit
    def _mmx(a, ah, b, SPLIT_A: tl.constexpr, LOWP: tl.constexpr):
        """a @ b to ~2^-16 relative for the products that feed the inner-state recurrence (bf16 modes).

        bf16 hi/lo split (3 bf16 dots: ah bh + ah bl + al bh; al bl is below fp32 accumulation noise):
        plain bf16 operands there let the scan drift by up to 6e-2 (output) and 6e-1 (gradients) in some
        heads at T = 18,048 (README.md, "Triton backend", v4). ``ah`` is ``_op(a)`` (hoisted by the
        caller); with SPLIT_A = False a is taken as exact in bf16 (K for bf16 inputs).
        """
        if LOWP == 0:
            c = tl.dot(a, b, input_precision="ieee")
        else:
            bh = b.to(tl.bfloat16)
            bl = _lo(b, bh, LOWP)
            if LOWP == 2:
                bh = bh.to(tl.float32)
            if LOWP == 2:
                a2 = ah.to(tl.float32)
            else:
                a2 = ah
            if SPLIT_A:
                c = tl.dot(_lo(a, ah, LOWP), bh)
                c = tl.dot(a2, bl, c)
            else:
                c = tl.dot(a2, bl)
            c = tl.dot(a2, bh, c)
        return c

    @triton.jit
    def _op(x, LOWP: tl.constexpr):
        """x as a matmul operand, converted once outside the F loops: bf16 unless LOWP == 0."""
        if LOWP == 0:
            y = x
        else:
            y = x.to(tl.bfloat16)
        return y

    @triton.jit
    def _ldw(ptr, cmask, EVEN_D: tl.constexpr):
        """Load a [BD, BF] state tile (rows: D, padded columns masked unless D is a power of two)."""
        if EVEN_D:
            x = tl.load(ptr)
        else:
            x = tl.load(ptr, mask=cmask[:, None], other=0.0)
        return x

    @triton.jit
    def _stw(ptr, x, cmask, EVEN_D: tl.constexpr):
        if EVEN_D:
            tl.store(ptr, x)
        else:
            tl.store(ptr, x, mask=cmask[:, None])

    @triton.jit
    def _tanh(u):
        # tanh through the logistic function: portable (no libdevice) and exact at +-inf.
        return 2.0 * tl.sigmoid(2.0 * u) - 1.0

    @triton.jit
    def _gelu(z):
        t = _tanh(0.7978845608028654 * (z + 0.044715 * z * z * z))
        return 0.5 * z * (1.0 + t)

    @triton.jit
    def _gelu_d1(z):
        """gelu_tanh(z) and its first derivative."""
        t = _tanh(0.7978845608028654 * (z + 0.044715 * z * z * z))
        du = 0.7978845608028654 * (1.0 + 0.134145 * z * z)
        return 0.5 * z * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * du

    @triton.jit
    def _gelu_d2(z):
        """gelu_tanh(z), its first and its second derivative.

        With u = c (z + a z^3): gelu'' = (1 - t^2) (u' - z t u'^2 + z u''/2), z u''/2 = 3 a c z^2.
        """
        t = _tanh(0.7978845608028654 * (z + 0.044715 * z * z * z))
        du = 0.7978845608028654 * (1.0 + 0.134145 * z * z)
        s = 1.0 - t * t
        d1 = 0.5 * (1.0 + t) + 0.5 * z * s * du
        d2 = s * (du - z * t * du * du + 0.10703222440366 * z * z)
        return 0.5 * z * (1.0 + t), d1, d2

    @triton.jit
    def _ln(z, cmask, eps, D: tl.constexpr):
        """Row-wise (z - mean) * rstd over the D real columns (padded columns of z are zero)."""
        mu = tl.sum(z, 1) / D
        zc = tl.where(cmask[None, :], z - mu[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(zc * zc, 1) / D + eps)
        return zc * rstd[:, None], rstd

    @triton.jit
    def _ln_proj(g, xh, cmask, D: tl.constexpr):
        """g - mean(g) - xh * mean(g * xh): the LayerNorm backward without its rstd factor."""
        mg = tl.sum(g, 1) / D
        mgx = tl.sum(g * xh, 1) / D
        return tl.where(cmask[None, :], g - mg[:, None] - xh * mgx[:, None], 0.0)

    @triton.jit
    def _fwd_step(
        qp, kp, vp, ep, op, n, gamma, beta,
        s_w1, s_b1, s_w2, s_b2,
        d_w1, d_b1, d_w2, d_b2,
        c_w1, c_b1, c_w2, c_b2, csave,
        zs, eps,
        D: tl.constexpr, F: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr,
        LOWP: tl.constexpr, WITH_OUT: tl.constexpr, SAVE: tl.constexpr, EVEN_D: tl.constexpr,
        KSPLIT: tl.constexpr, XP: tl.constexpr,
    ):
        """One mini-batch: state s_* -> d_* (different buffers), out rows if WITH_OUT.

        qp..op point at the mini-batch's first token (rows of D), ep at its first eta; n <= BM rows
        are real. If SAVE and csave, the incoming state is also copied to c_* (a checkpoint).
        zs: [BM, F] fp32 scratch for Z1 between the two passes.
        """
        rows = tl.arange(0, BM)
        cols = tl.arange(0, BD)
        rmask = rows < n
        cmask = cols < D
        xoff = rows[:, None] * D + cols[None, :]
        xmask = rmask[:, None] & cmask[None, :]
        k = tl.load(kp + xoff, mask=xmask, other=0.0).to(tl.float32)
        v = tl.load(vp + xoff, mask=xmask, other=0.0).to(tl.float32)
        eta = tl.load(ep + rows, mask=rmask, other=0.0).to(tl.float32)
        kb = _op(k, LOWP)

        # Z1, Z2 and G_z1 feed the state recurrence: extended precision (_mmx), see _mmx.
        z2 = tl.zeros([BM, BD], dtype=tl.float32)
        for f0 in range(0, F, BF):
            fs = f0 + tl.arange(0, BF)
            woff = cols[:, None] * F + fs[None, :]
            w1 = _ldw(s_w1 + woff, cmask, EVEN_D)
            b1 = tl.load(s_b1 + fs)
            w2t = _ldw(s_w2 + woff, cmask, EVEN_D)
            if XP:
                z1 = _mmx(k, kb, w1, KSPLIT, LOWP) + b1[None, :]
            else:
                z1 = _mm(kb, w1, LOWP) + b1[None, :]
            tl.store(zs + rows[:, None] * F + fs[None, :], z1)
            a = _gelu(z1)
            if XP:
                z2 += _mmx(a, _op(a, LOWP), tl.trans(w2t), True, LOWP)
            else:
                z2 += _mm(a, tl.trans(w2t), LOWP)
        b2 = tl.load(s_b2 + cols, mask=cmask, other=0.0)
        z2 += b2[None, :]
        xh, rstd = _ln(z2, cmask, eps, D)
        resid = tl.where(xmask, gamma[None, :] * xh + beta[None, :] - (v - k), 0.0)
        gxh = gamma[None, :] * (eta[:, None] * resid)
        # Padded rows carry eta = 0 and are masked again so that no padding reaches an update.
        gz2 = tl.where(rmask[:, None], rstd[:, None] * _ln_proj(gxh, xh, cmask, D), 0.0)
        b2n = b2 - tl.sum(gz2, 0)
        tl.store(d_b2 + cols, b2n, mask=cmask)
        if SAVE:
            tl.store(c_b2 + cols, b2, mask=cmask & csave)
        gz2b = _op(gz2, LOWP)
        # Z1 scratch written above is read below by other threads.
        tl.debug_barrier()

        if WITH_OUT:
            q = tl.load(qp + xoff, mask=xmask, other=0.0).to(tl.float32)
            qb = _op(q, LOWP)
            zq2 = tl.zeros([BM, BD], dtype=tl.float32)
        for f0 in range(0, F, BF):
            fs = f0 + tl.arange(0, BF)
            woff = cols[:, None] * F + fs[None, :]
            w1 = _ldw(s_w1 + woff, cmask, EVEN_D)
            b1 = tl.load(s_b1 + fs)
            w2t = _ldw(s_w2 + woff, cmask, EVEN_D)
            if SAVE:
                tl.store(c_w1 + woff, w1, mask=cmask[:, None] & csave)
                tl.store(c_b1 + fs, b1, mask=(fs < F) & csave)
                tl.store(c_w2 + woff, w2t, mask=cmask[:, None] & csave)
            a, da = _gelu_d1(tl.load(zs + rows[:, None] * F + fs[None, :]))
            if XP:
                gz1 = _mmx(gz2, gz2b, w2t, True, LOWP) * da
            else:
                gz1 = _mm(gz2b, w2t, LOWP) * da
            w2tn = w2t - _mm(tl.trans(gz2b), a, LOWP)
            w1n = w1 - _mm(tl.trans(kb), gz1, LOWP)
            b1n = b1 - tl.sum(gz1, 0)
            _stw(d_w1 + woff, w1n, cmask, EVEN_D)
            tl.store(d_b1 + fs, b1n)
            _stw(d_w2 + woff, w2tn, cmask, EVEN_D)
            if WITH_OUT:
                zq1 = _mm(qb, w1n, LOWP) + b1n[None, :]
                zq2 += _mm(_gelu(zq1), tl.trans(w2tn), LOWP)
        if WITH_OUT:
            zq2 += b2n[None, :]
            xq, _ = _ln(zq2, cmask, eps, D)
            out = q + gamma[None, :] * xq + beta[None, :]
            tl.store(op + xoff, out.to(op.dtype.element_ty), mask=xmask)
        # The new state and the Z1 scratch are read by other threads in the next step.
        tl.debug_barrier()

    @triton.jit
    def _fwd_kernel(
        Q, K, V, ETA, LNW, LNB, OUT,
        W1, B1, W2, B2,  # work state [B*H, 2, ...] fp32, slot 0 holds the initial state
        CW1, CB1, CW2, CB2,  # checkpoints [B*H, C, ...] fp32
        ZS,  # [B*H, BM, F] fp32
        T, H, NMB, G, NCK, eps,
        D: tl.constexpr, F: tl.constexpr, M: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr,
        BF: tl.constexpr, LOWP: tl.constexpr, WITH_OUT: tl.constexpr, SAVE: tl.constexpr, KSPLIT: tl.constexpr,
    ):
        pid = tl.program_id(0).to(tl.int64)
        h = pid % H
        cols = tl.arange(0, BD)
        cmask = cols < D
        gamma = tl.load(LNW + h * D + cols, mask=cmask, other=0.0).to(tl.float32)
        beta = tl.load(LNB + h * D + cols, mask=cmask, other=0.0).to(tl.float32)
        xbase = pid * T * D
        w_sz = D * F
        w1p = W1 + pid * 2 * w_sz
        b1p = B1 + pid * 2 * F
        w2p = W2 + pid * 2 * w_sz
        b2p = B2 + pid * 2 * D
        cw1 = CW1 + pid * NCK * w_sz
        cb1 = CB1 + pid * NCK * F
        cw2 = CW2 + pid * NCK * w_sz
        cb2 = CB2 + pid * NCK * D
        zs = ZS + pid * BM * F
        # Runtime-bound loops are written as while loops: the interpreter cannot range() over a
        # scalar tensor with numpy >= 2.4, and the compiled code is the same.
        j = 0
        while j < NMB:
            # Ping-pong between the two state slots: each step reads one and writes the other, so
            # no thread overwrites state that another thread has yet to read.
            src = j % 2
            dst = 1 - src
            c = j // G
            t0 = j * M
            _fwd_step(
                Q + xbase + t0 * D, K + xbase + t0 * D, V + xbase + t0 * D, ETA + pid * T + t0,
                OUT + xbase + t0 * D, tl.minimum(T - t0, M), gamma, beta,
                w1p + src * w_sz, b1p + src * F, w2p + src * w_sz, b2p + src * D,
                w1p + dst * w_sz, b1p + dst * F, w2p + dst * w_sz, b2p + dst * D,
                cw1 + c * w_sz, cb1 + c * F, cw2 + c * w_sz, cb2 + c * D, (j % G) == 0,
                zs, eps, D, F, BM, BD, BF, LOWP, WITH_OUT, SAVE, BD == D, KSPLIT, True,
            )
            j += 1

    @triton.jit
    def _bwd_step(
        qp, kp, vp, ep, dop, dqp, dkp, dvp, dep, n, gamma, beta,
        s_w1, s_b1, s_w2, s_b2,  # state before the step
        u_w1, u_b1, u_w2, u_b2,  # state after the step
        g_w1, g_b1, g_w2, g_b2,  # gradient of the state after the step; on return, before it
        t_w1, t_b1, t_w2,  # a second gradient buffer for the partial sums between passes
        zs, eps,
        D: tl.constexpr, F: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr,
        LOWP: tl.constexpr, EVEN_D: tl.constexpr,
    ):
        """Backward of one mini-batch (README.md, "Backward of one step"). Returns dgamma, dbeta [BD].

        zs: [3, BM, F] fp32 scratch for Z1, Zq1 and the partial dZ1 between passes.
        """
        rows = tl.arange(0, BM)
        cols = tl.arange(0, BD)
        rmask = rows < n
        cmask = cols < D
        xoff = rows[:, None] * D + cols[None, :]
        xmask = rmask[:, None] & cmask[None, :]
        foff = rows[:, None] * F
        zs1 = zs
        zsq = zs + BM * F
        zsp = zs + 2 * BM * F
        k = tl.load(kp + xoff, mask=xmask, other=0.0).to(tl.float32)
        v = tl.load(vp + xoff, mask=xmask, other=0.0).to(tl.float32)
        q = tl.load(qp + xoff, mask=xmask, other=0.0).to(tl.float32)
        do = tl.load(dop + xoff, mask=xmask, other=0.0).to(tl.float32)
        eta = tl.load(ep + rows, mask=rmask, other=0.0).to(tl.float32)

        # Pass 1: the forward of the inner step (Z2) and of the output (Zq2).
        z2 = tl.zeros([BM, BD], dtype=tl.float32)
        zq2 = tl.zeros([BM, BD], dtype=tl.float32)
        for f0 in range(0, F, BF):
            fs = f0 + tl.arange(0, BF)
            woff = cols[:, None] * F + fs[None, :]
            w1 = _ldw(s_w1 + woff, cmask, EVEN_D)
            w2t = _ldw(s_w2 + woff, cmask, EVEN_D)
            z1 = _mm(k, w1, LOWP) + tl.load(s_b1 + fs)[None, :]
            tl.store(zs1 + foff + fs[None, :], z1)
            z2 += _mm(_gelu(z1), tl.trans(w2t), LOWP)
            w1n = _ldw(u_w1 + woff, cmask, EVEN_D)
            w2tn = _ldw(u_w2 + woff, cmask, EVEN_D)
            zq1 = _mm(q, w1n, LOWP) + tl.load(u_b1 + fs)[None, :]
            tl.store(zsq + foff + fs[None, :], zq1)
            zq2 += _mm(_gelu(zq1), tl.trans(w2tn), LOWP)
        z2 += tl.load(s_b2 + cols, mask=cmask, other=0.0)[None, :]
        zq2 += tl.load(u_b2 + cols, mask=cmask, other=0.0)[None, :]
        xh, rstd = _ln(z2, cmask, eps, D)
        resid = tl.where(xmask, gamma[None, :] * xh + beta[None, :] - (v - k), 0.0)
        gy = eta[:, None] * resid
        gxh = gamma[None, :] * gy
        pg = _ln_proj(gxh, xh, cmask, D)
        gz2 = tl.where(rmask[:, None], rstd[:, None] * pg, 0.0)

        # Output backward, row-wise part: out = q + gamma * LN(Zq2) + beta.
        xq, rq = _ln(zq2, cmask, eps, D)
        xq = tl.where(xmask, xq, 0.0)
        dbeta = tl.sum(do, 0)
        dgamma = tl.sum(do * xq, 0)
        dzq2 = tl.where(rmask[:, None], rq[:, None] * _ln_proj(gamma[None, :] * do, xq, cmask, D), 0.0)
        db2n = tl.load(g_b2 + cols, mask=cmask, other=0.0) + tl.sum(dzq2, 0)  # total d(new b2)
        dgz2 = tl.zeros([BM, BD], dtype=tl.float32) - db2n[None, :]
        dq = do
        dk = tl.zeros([BM, BD], dtype=tl.float32)
        kb = _op(k, LOWP)
        gz2b = _op(gz2, LOWP)
        dzq2b = _op(dzq2, LOWP)
        qt = tl.trans(_op(q, LOWP))
        gz2t = tl.trans(gz2b)
        dzq2t = tl.trans(dzq2b)
        tl.debug_barrier()

        # Pass 2: finish d(new W1, b1, W2) with the output's terms, then push them through the update
        # W1' = W1 - K^T G_z1, b1' = b1 - sum G_z1, W2' = W2 - A^T G_z2 (all but the dZ2 terms).
        for f0 in range(0, F, BF):
            fs = f0 + tl.arange(0, BF)
            woff = cols[:, None] * F + fs[None, :]
            w1 = _ldw(s_w1 + woff, cmask, EVEN_D)
            w2t = _ldw(s_w2 + woff, cmask, EVEN_D)
            w1n = _ldw(u_w1 + woff, cmask, EVEN_D)
            w2tn = _ldw(u_w2 + woff, cmask, EVEN_D)
            dw1 = _ldw(g_w1 + woff, cmask, EVEN_D)
            db1 = tl.load(g_b1 + fs)
            dw2t = _ldw(g_w2 + woff, cmask, EVEN_D)
            a, da, dda = _gelu_d2(tl.load(zs1 + foff + fs[None, :]))
            aq, daq = _gelu_d1(tl.load(zsq + foff + fs[None, :]))

            dw2t += _mm(dzq2t, aq, LOWP)
            dzq1 = _mm(dzq2b, w2tn, LOWP) * daq
            dw1 += _mm(qt, dzq1, LOWP)
            db1 += tl.sum(dzq1, 0)
            dq += _mm(dzq1, tl.trans(w1n), LOWP)

            ga = _mm(gz2b, w2t, LOWP)
            gz1 = ga * da
            dgz1 = -(_mm(kb, dw1, LOWP) + db1[None, :])
            dk -= _mm(gz1, tl.trans(dw1), LOWP)
            dgz2 -= _mm(a, tl.trans(dw2t), LOWP)
            dga = dgz1 * da
            # dZ1 without its dZ2 term, which needs the full dG_z2 (a sum over F) first.
            p = dgz1 * ga * dda - _mm(gz2b, dw2t, LOWP) * da
            tl.store(zsp + foff + fs[None, :], p)
            dgz2 += _mm(dga, tl.trans(w2t), LOWP)
            dw2t += _mm(gz2t, dga, LOWP)
            _stw(t_w1 + woff, dw1, cmask, EVEN_D)
            tl.store(t_b1 + fs, db1)
            _stw(t_w2 + woff, dw2t, cmask, EVEN_D)

        # Row-wise: G_z2 = rstd * P(G_xh) back to G_xh, Xh and rstd; then G_xh = gamma * eta * resid.
        dgz2 = tl.where(rmask[:, None], dgz2, 0.0)
        dgxh = rstd[:, None] * _ln_proj(dgz2, xh, cmask, D)
        c_gx = tl.sum(gxh * xh, 1) / D
        c_ux = tl.sum(dgz2 * rstd[:, None] * xh, 1) / D
        dxh = -(c_gx[:, None] * rstd[:, None] * dgz2 + c_ux[:, None] * gxh)
        drstd = tl.sum(dgz2 * pg, 1)
        dgamma += tl.sum(dgxh * gy, 0)
        dgy = gamma[None, :] * dgxh
        deta = tl.sum(dgy * resid, 1)
        tl.store(dep + rows, deta.to(dep.dtype.element_ty), mask=rmask)
        dres = tl.where(xmask, eta[:, None] * dgy, 0.0)
        tl.store(dvp + xoff, (-dres).to(dvp.dtype.element_ty), mask=xmask)
        dk += dres
        dbeta += tl.sum(dres, 0)
        dgamma += tl.sum(dres * xh, 0)
        dxh += gamma[None, :] * dres
        dz2 = rstd[:, None] * _ln_proj(dxh, xh, cmask, D) - (drstd * rstd * rstd / D)[:, None] * xh
        dz2 = tl.where(xmask, dz2, 0.0)
        tl.store(g_b2 + cols, db2n + tl.sum(dz2, 0), mask=cmask)
        dz2b = _op(dz2, LOWP)
        dz2t = tl.trans(dz2b)
        kt = tl.trans(_op(k, LOWP))
        tl.debug_barrier()

        # Pass 3: the dZ2 terms: dA += dZ2 W2^T, then dZ1 -> dW1, db1, dK; dW2 += A^T dZ2.
        for f0 in range(0, F, BF):
            fs = f0 + tl.arange(0, BF)
            woff = cols[:, None] * F + fs[None, :]
            w1 = _ldw(s_w1 + woff, cmask, EVEN_D)
            w2t = _ldw(s_w2 + woff, cmask, EVEN_D)
            dw1 = _ldw(t_w1 + woff, cmask, EVEN_D)
            db1 = tl.load(t_b1 + fs)
            dw2t = _ldw(t_w2 + woff, cmask, EVEN_D)
            a, da = _gelu_d1(tl.load(zs1 + foff + fs[None, :]))
            dz1 = tl.load(zsp + foff + fs[None, :]) + _mm(dz2b, w2t, LOWP) * da
            dw2t += _mm(dz2t, a, LOWP)
            dw1 += _mm(kt, dz1, LOWP)
            db1 += tl.sum(dz1, 0)
            dk += _mm(dz1, tl.trans(w1), LOWP)
            _stw(g_w1 + woff, dw1, cmask, EVEN_D)
            tl.store(g_b1 + fs, db1)
            _stw(g_w2 + woff, dw2t, cmask, EVEN_D)
        tl.store(dqp + xoff, dq.to(dqp.dtype.element_ty), mask=xmask)
        tl.store(dkp + xoff, dk.to(dkp.dtype.element_ty), mask=xmask)
        tl.debug_barrier()
        return dgamma, dbeta

    @triton.jit
    def _bwd_kernel(
        Q, K, V, ETA, LNW, LNB, DO, DQ, DK, DV, DETA, DGAM, DBET,
        CW1, CB1, CW2, CB2,  # checkpoints [B*H, C, ...] fp32
        SW1, SB1, SW2, SB2,  # chunk states [B*H, G+1, ...] fp32
        GW1, GB1, GW2, GB2,  # state gradient [B*H, 2, ...] fp32, slot 0 zero on entry
        ZS,  # [B*H, 3, BM, F] fp32
        T, H, NMB, G, NCK, eps,
        D: tl.constexpr, F: tl.constexpr, M: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr,
        BF: tl.constexpr, LOWP: tl.constexpr, KSPLIT: tl.constexpr, XREC: tl.constexpr,
    ):
        pid = tl.program_id(0).to(tl.int64)
        h = pid % H
        cols = tl.arange(0, BD)
        cmask = cols < D
        gamma = tl.load(LNW + h * D + cols, mask=cmask, other=0.0).to(tl.float32)
        beta = tl.load(LNB + h * D + cols, mask=cmask, other=0.0).to(tl.float32)
        xbase = pid * T * D
        w_sz = D * F
        cw1 = CW1 + pid * NCK * w_sz
        cb1 = CB1 + pid * NCK * F
        cw2 = CW2 + pid * NCK * w_sz
        cb2 = CB2 + pid * NCK * D
        sw1 = SW1 + pid * (G + 1) * w_sz
        sb1 = SB1 + pid * (G + 1) * F
        sw2 = SW2 + pid * (G + 1) * w_sz
        sb2 = SB2 + pid * (G + 1) * D
        gw1 = GW1 + pid * 2 * w_sz
        gb1 = GB1 + pid * 2 * F
        gw2 = GW2 + pid * 2 * w_sz
        gb2 = GB2 + pid * 2 * D
        zs = ZS + pid * 3 * BM * F
        dgamma = tl.zeros([BD], dtype=tl.float32)
        dbeta = tl.zeros([BD], dtype=tl.float32)
        c = NCK - 1
        while c >= 0:
            j0 = c * G
            nloc = tl.minimum(NMB - j0, G)
            # Slot 0 <- the checkpoint; slots 1..nloc <- the states after each step of the chunk.
            for f0 in range(0, F, BF):
                fs = f0 + tl.arange(0, BF)
                woff = cols[:, None] * F + fs[None, :]
                tl.store(sw1 + woff, tl.load(cw1 + c * w_sz + woff, mask=cmask[:, None]), mask=cmask[:, None])
                tl.store(sb1 + fs, tl.load(cb1 + c * F + fs))
                w2c = tl.load(cw2 + c * w_sz + woff, mask=cmask[:, None])
                tl.store(sw2 + woff, w2c, mask=cmask[:, None])
            tl.store(sb2 + cols, tl.load(cb2 + c * D + cols, mask=cmask), mask=cmask)
            tl.debug_barrier()
            jl = 0
            while jl < nloc:
                t0 = (j0 + jl) * M
                _fwd_step(
                    Q, K + xbase + t0 * D, V + xbase + t0 * D, ETA + pid * T + t0, DQ, tl.minimum(T - t0, M),
                    gamma, beta,
                    sw1 + jl * w_sz, sb1 + jl * F, sw2 + jl * w_sz, sb2 + jl * D,
                    sw1 + (jl + 1) * w_sz, sb1 + (jl + 1) * F, sw2 + (jl + 1) * w_sz, sb2 + (jl + 1) * D,
                    cw1, cb1, cw2, cb2, False,
                    zs, eps, D, F, BM, BD, BF, LOWP, False, False, BD == D, KSPLIT, XREC,
                )
                jl += 1
            jl = nloc - 1
            while jl >= 0:
                t0 = (j0 + jl) * M
                xo = xbase + t0 * D
                dg, db = _bwd_step(
                    Q + xo, K + xo, V + xo, ETA + pid * T + t0, DO + xo,
                    DQ + xo, DK + xo, DV + xo, DETA + pid * T + t0, tl.minimum(T - t0, M), gamma, beta,
                    sw1 + jl * w_sz, sb1 + jl * F, sw2 + jl * w_sz, sb2 + jl * D,
                    sw1 + (jl + 1) * w_sz, sb1 + (jl + 1) * F, sw2 + (jl + 1) * w_sz, sb2 + (jl + 1) * D,
                    gw1, gb1, gw2, gb2, gw1 + w_sz, gb1 + F, gw2 + w_sz,
                    zs, eps, D, F, BM, BD, BF, LOWP, BD == D,
                )
                dgamma += dg
                dbeta += db
                jl -= 1
            c -= 1
        tl.store(DGAM + pid * D + cols, dgamma, mask=cmask)
        tl.store(DBET + pid * D + cols, dbeta, mask=cmask)



def _next_pow2(x: int) -> int:
    return 1 << (x - 1).bit_length()


def _matmul_mode(dtype: torch.dtype) -> int:
    """The kernels' LOWP switch: 0 fp32 operands, 1 bf16 operands, 2 bf16-rounded fp32 (interpreter)."""
    if dtype == torch.float32:
        return 0
    return 2 if _interpreting() else 1


def _launch_config(kernel: str, dim: int, hidden: int, mini_batch_size: int, dtype: torch.dtype) -> dict:
    """Tile sizes and warps. BF is the F tile: the largest of 64/32/16 that divides F."""
    bf = next(b for b in (64, 32, 16) if hidden % b == 0)
    bm = _next_pow2(mini_batch_size)
    # KSPLIT: K is not exact in bf16 (fp16 inputs), so its low part joins the extended-precision Z1.
    cfg = dict(BM=bm, BD=_next_pow2(dim), BF=bf, LOWP=_matmul_mode(dtype), KSPLIT=dtype == torch.float16)
    # Fastest measured on an H100 at D=64, F=256 (README.md, "Triton backend"): forward 8 warps without software
    # pipelining (15.4 ms vs 17.2 with 4 warps, 3 stages, T=18,048), backward 4 warps, 2 stages.
    if kernel == "fwd":
        cfg.update(num_warps=8, num_stages=1)
    else:
        # XREC: the chunk's state recomputation uses the forward's extended-precision products (_mmx).
        # Off: it restarts from the forward's checkpoints every G steps, so plain bf16 drifts little
        # (H100, T = 101,376: max grad error 4.3e-3 off vs 4.1e-3 on; backward at T = 351,168
        # 1,358 ms off vs 1,425 ms on).
        cfg.update(num_warps=4, num_stages=2, XREC=False)
    if CONFIG_OVERRIDE.get(kernel):
        cfg.update(CONFIG_OVERRIDE[kernel])
        assert hidden % cfg["BF"] == 0, "BF must divide F"
    return cfg


# Launch configuration that fitted the device, per kernel and shape (see _launch).
_FITTED: dict[tuple, dict] = {}


def _fallbacks(cfg: dict):
    """cfg, then the same without software pipelining (less shared memory; the fp32 backward needs
    it on an H100). Smaller F tiles would need less still but fail on GPUs (README.md)."""
    yield cfg
    yield {**cfg, "num_stages": 1}


def _launch(kernel, grid, args: tuple, constants: dict, cfg: dict) -> None:
    """Launch with the first configuration whose shared memory fits this GPU (H100: 227 KiB; less on
    A100 and consumer cards), remembering it for the next call of the same shape."""
    device = torch.cuda.current_device() if torch.cuda.is_available() else -1
    key = (id(kernel), tuple(sorted(constants.items())), tuple(sorted(cfg.items())), device)
    if key in _FITTED:
        kernel[grid](*args, **constants, **_FITTED[key])
        return
    last_err = None
    for candidate in _fallbacks(cfg):
        try:
            kernel[grid](*args, **constants, **candidate)
        except OutOfResources as err:
            last_err = err
            continue
        _FITTED[key] = candidate
        return
    raise last_err


def _empty(*shape, device, dtype=torch.float32) -> Tensor:
    t = torch.empty(*shape, device=device, dtype=dtype)
    if POISON_BUFFERS:
        t.fill_(float("nan"))
    return t


def _num_minibatches(seq_len: int, mini_batch_size: int) -> int:
    return -(-seq_len // mini_batch_size)


def _run_forward(q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2, mini_batch_size, eps, checkpoint_every,
                 save_state, with_out):
    bsz, heads, seq_len, dim = q.shape
    hidden = w1.shape[-1]
    dev = q.device
    n_mb = _num_minibatches(seq_len, mini_batch_size)
    n_ck = -(-n_mb // checkpoint_every) if save_state else 0
    cfg = _launch_config("fwd", dim, hidden, mini_batch_size, q.dtype)
    q, k, v, eta = (t.contiguous() for t in (q, k, v, eta))
    out = _empty(bsz, heads, seq_len, dim, device=dev, dtype=q.dtype) if with_out else q

    def work(x: Tensor, *shape) -> Tensor:
        buf = _empty(bsz, heads, 2, *shape, device=dev)
        buf[:, :, 0] = x.float()
        return buf

    # The work state holds W2 transposed ([D, F], like W1): every state tile is [D, BF].
    ws = (work(w1, dim, hidden), work(b1, hidden), work(w2.transpose(-1, -2), dim, hidden), work(b2, dim))
    ck = (
        _empty(bsz, heads, n_ck, dim, hidden, device=dev),
        _empty(bsz, heads, n_ck, hidden, device=dev),
        _empty(bsz, heads, n_ck, dim, hidden, device=dev),  # W2 transposed
        _empty(bsz, heads, n_ck, dim, device=dev),
    )
    # Without checkpoints the kernel never touches these pointers; give it valid non-empty ones.
    ck_args = ck if save_state else ws
    zs = _empty(bsz * heads, cfg["BM"], hidden, device=dev)
    _launch(
        _fwd_kernel,
        (bsz * heads,),
        (q, k, v, eta, ln_weight.contiguous(), ln_bias.contiguous(), out, *ws, *ck_args, zs,
         seq_len, heads, n_mb, checkpoint_every, max(n_ck, 1), float(eps)),
        dict(D=dim, F=hidden, M=mini_batch_size, WITH_OUT=with_out, SAVE=save_state),
        cfg,
    )
    return out, ck


def forward(q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2, mini_batch_size: int, eps: float,
            checkpoint_every: int, save_state: bool):
    """Returns out [B,H,T,D] (dtype of q) and the fp32 checkpoints W1 [B,H,C,D,F], b1 [B,H,C,F],
    W2 [B,H,C,F,D], b2 [B,H,C,D], the state at the start of every checkpoint_every-th mini-batch
    (C = ceil(n_minibatches / checkpoint_every), or 0 without save_state)."""
    out, (cw1, cb1, cw2t, cb2) = _run_forward(q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2, mini_batch_size,
                                              eps, checkpoint_every, save_state, with_out=True)
    # The kernels keep W2 transposed ([D, F]); the op's checkpoints are [F, D] (a copy, ~1 ms at T=351k).
    return out, (cw1, cb1, cw2t.transpose(-1, -2).contiguous(), cb2)


def backward(grad_out, q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2, states, mini_batch_size: int,
             eps: float, checkpoint_every: int):
    """Gradients (dq, dk, dv, deta, dln_weight, dln_bias, dw1, db1, dw2, db2), each in its input's
    dtype and shape. ``states`` is what ``forward`` returned; if it holds no checkpoint (C = 0) the
    checkpoints are recomputed first."""
    bsz, heads, seq_len, dim = q.shape
    hidden = w1.shape[-1]
    dev = q.device
    if states[0].shape[2] == 0:
        _, states = _run_forward(q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2, mini_batch_size, eps,
                                 checkpoint_every, True, with_out=False)
    else:  # W2 checkpoints [F, D] -> the kernels' [D, F]
        states = (states[0], states[1], states[2].transpose(-1, -2), states[3])
    n_mb = _num_minibatches(seq_len, mini_batch_size)
    n_ck = states[0].shape[2]
    assert n_ck == -(-n_mb // checkpoint_every), "states do not match checkpoint_every"
    g = min(checkpoint_every, n_mb)
    cfg = _launch_config("bwd", dim, hidden, mini_batch_size, q.dtype)
    q, k, v, eta, grad_out = (t.contiguous() for t in (q, k, v, eta, grad_out))
    states = tuple(s.contiguous() for s in states)
    dq, dk, dv = (_empty(bsz, heads, seq_len, dim, device=dev, dtype=t.dtype) for t in (q, k, v))
    deta = _empty(bsz, heads, seq_len, device=dev, dtype=eta.dtype)
    dgam = _empty(bsz, heads, dim, device=dev)
    dbet = _empty(bsz, heads, dim, device=dev)
    chunk = (
        _empty(bsz * heads, g + 1, dim, hidden, device=dev),
        _empty(bsz * heads, g + 1, hidden, device=dev),
        _empty(bsz * heads, g + 1, dim, hidden, device=dev),  # W2 transposed
        _empty(bsz * heads, g + 1, dim, device=dev),
    )
    dstate = (
        torch.zeros(bsz, heads, 2, dim, hidden, device=dev),
        torch.zeros(bsz, heads, 2, hidden, device=dev),
        torch.zeros(bsz, heads, 2, dim, hidden, device=dev),  # dW2 transposed, like the work state
        torch.zeros(bsz, heads, 2, dim, device=dev),
    )
    zs = _empty(bsz * heads, 3, cfg["BM"], hidden, device=dev)
    _launch(
        _bwd_kernel,
        (bsz * heads,),
        (q, k, v, eta, ln_weight.contiguous(), ln_bias.contiguous(), grad_out, dq, dk, dv, deta, dgam, dbet,
         *states, *chunk, *dstate, zs, seq_len, heads, n_mb, g, n_ck, float(eps)),
        dict(D=dim, F=hidden, M=mini_batch_size),
        cfg,
    )
    dw1, db1, dw2, db2 = (s[:, :, 0].sum(0) for s in dstate)
    dw2 = dw2.transpose(-1, -2)
    return (
        dq, dk, dv, deta,
        dgam.sum(0).to(ln_weight.dtype), dbet.sum(0).to(ln_bias.dtype),
        dw1.to(w1.dtype), db1.to(b1.dtype), dw2.to(w2.dtype), db2.to(b2.dtype),
    )
