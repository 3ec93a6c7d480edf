"""Triton backend of ``tttgraph::ttt_mlp``: portable forward and backward kernels (see README.md, "Triton backend").

Shapes (the op's canonical layout):
    q, k, v: [B, H, T, D]    eta: [B, H, T]    ln_weight, ln_bias: [H, D]
    w1: [H, D, F]   b1: [H, F]   w2: [H, F, D]   b2: [H, D]      out: [B, H, T, D] (dtype of q)

The forward runs P programs per (batch, head) (P = 2 when they fit the GPU one per SM, else 1), each
owning F / P columns of the hidden layer; they walk the mini-batches in order and add their partial
[BM, D] sums through an L2 exchange buffer once per mini-batch. The backward runs one program per
(batch, head). The fp32 inner state lives in per-head scratch buffers (L2-resident at real sizes)
read and written in tiles of BF columns of F; F is zero-padded to a multiple of 64 on GPUs (exact,
see F_MULTIPLE); D is one tile (padded to a power of two, at least 16, the smallest dot operand; the
padded columns are masked out of every load, store and LayerNorm statistic, so any D in 1..128 and
any F run exactly).
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

# backend="auto" runs the Triton backward for bf16/fp16 inputs. It can because Z1, Z2 and G_z1 of the
# forward's state update, which feed the inner-state recurrence, are computed with bf16 hi/lo split
# operands (_mmx): with plain bf16 operands the gradients of ill-conditioned heads drift by up to
# 2.7e-1, with the split all ten bf16 gradients stay within ~3e-3 of the float32 reference (README.md,
# "bf16 accuracy of the scan"; timings in "Triton backend"). With float32 inputs it is exact to ~1e-6
# but slower than the reference backward, so auto takes the reference backward there.


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
    dim = q.shape[-1]
    if q.device.type == "cpu" and not _interpreting():
        return "tensors are on the CPU and TRITON_INTERPRET=1 is not set (the interpreter is for tests)"
    if q.device.type not in ("cpu", "cuda"):
        return f"device {q.device} is not a CUDA device"
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {q.dtype} is not one of float32, bfloat16, float16"
    if not 1 <= dim <= MAX_HEAD_DIM:
        return f"D={dim} is outside 1..{MAX_HEAD_DIM} (a row of D is one register tile)"
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
        heads at T = 18,048 (README.md, "bf16 accuracy of the scan"). ``ah`` is ``_op(a)`` (hoisted by the
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
    def _tanh(u, LOWP: tl.constexpr):
        """tanh(u). Low-precision modes on GPUs (LOWP == 1): the hardware's tanh.approx.f32 (one MUFU
        instruction, max relative error ~2^-11, below the bf16 operands' 2^-9), as the cuda_sm90 kernels
        use; the portable form costs ~20 instructions per element (exp, a full-precision reciprocal and
        their range fix-ups), a third of the forward's stall samples (README.md, "Triton backend").
        Otherwise through the logistic function: portable (no libdevice, runs in the interpreter) and
        exact at +-inf."""
        if LOWP == 1:
            t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [u], dtype=tl.float32,
                                          is_pure=True, pack=1)
        else:
            t = 2.0 * tl.sigmoid(2.0 * u) - 1.0
        return t

    @triton.jit
    def _gelu(z, LOWP: tl.constexpr):
        """gelu_tanh(z) = z/2 (1 + tanh(c (z + a z^3)))."""
        h = 0.5 * z
        t = _tanh(z * (0.7978845608028654 + 0.0356774081363001 * (z * z)), LOWP)
        return h + h * t

    @triton.jit
    def _gelu_d1(z, LOWP: tl.constexpr):
        """gelu_tanh(z) and its first derivative (1 + t)/2 + z/2 (1 - t^2) u', u' = c (1 + 3 a z^2)."""
        z2 = z * z
        h = 0.5 * z
        t = _tanh(z * (0.7978845608028654 + 0.0356774081363001 * z2), LOWP)
        du = 0.7978845608028654 + 0.1070322244089003 * z2
        return h + h * t, 0.5 + 0.5 * t + h * (1.0 - t * t) * du

    @triton.jit
    def _gelu_d2(z, LOWP: tl.constexpr):
        """gelu_tanh(z), its first and its second derivative.

        With u = c (z + a z^3): gelu'' = (1 - t^2) (u' - z t u'^2 + z u''/2), z u''/2 = 3 a c z^2.
        """
        z2 = z * z
        h = 0.5 * z
        t = _tanh(z * (0.7978845608028654 + 0.0356774081363001 * z2), LOWP)
        du = 0.7978845608028654 + 0.1070322244089003 * z2
        s = 1.0 - t * t
        d1 = 0.5 + 0.5 * t + h * s * du
        d2 = s * (du - z * t * du * du + 0.10703222440366 * z2)
        return h + h * t, d1, d2

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
    def _update_step(
        kp, vp, ep, n, gamma, beta,
        s_w1, s_b1, s_w2, s_b2,
        d_w1, d_b1, d_w2, d_b2,
        zs, eps,
        D: tl.constexpr, F: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr,
        LOWP: tl.constexpr, EVEN_D: tl.constexpr, KSPLIT: tl.constexpr, XP: tl.constexpr,
    ):
        """The state update of one mini-batch, state s_* -> d_* (different buffers), no output: the
        backward's chunk recomputation. kp..ep point at the mini-batch's first token (rows of D), n <= BM
        rows are real; zs: [BM, F] fp32 scratch for Z1 between the two passes. XP: the forward's
        extended-precision products (_mmx) instead of plain bf16.
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
            a = _gelu(z1, LOWP)
            if XP:
                z2 += _mmx(a, _op(a, LOWP), tl.trans(w2t), True, LOWP)
            else:
                z2 += _mm(a, tl.trans(w2t), LOWP)
        b2 = tl.load(s_b2 + cols, mask=cmask, other=0.0)
        gz2 = _inner_grad_z2(z2 + b2[None, :], k, v, eta, gamma, beta, rmask, cmask, eps, D)
        tl.store(d_b2 + cols, b2 - tl.sum(gz2, 0), mask=cmask)
        gz2b = _op(gz2, LOWP)
        # Z1 scratch written above is read below by other threads.
        tl.debug_barrier()

        for f0 in range(0, F, BF):
            fs = f0 + tl.arange(0, BF)
            woff = cols[:, None] * F + fs[None, :]
            w1 = _ldw(s_w1 + woff, cmask, EVEN_D)
            b1 = tl.load(s_b1 + fs)
            w2t = _ldw(s_w2 + woff, cmask, EVEN_D)
            a, da = _gelu_d1(tl.load(zs + rows[:, None] * F + fs[None, :]), LOWP)
            if XP:
                gz1 = _mmx(gz2, gz2b, w2t, True, LOWP) * da
            else:
                gz1 = _mm(gz2b, w2t, LOWP) * da
            _stw(d_w2 + woff, w2t - _mm(tl.trans(gz2b), a, LOWP), cmask, EVEN_D)
            _stw(d_w1 + woff, w1 - _mm(tl.trans(kb), gz1, LOWP), cmask, EVEN_D)
            tl.store(d_b1 + fs, b1 - tl.sum(gz1, 0))
        # The new state and the Z1 scratch are read by other threads in the next step.
        tl.debug_barrier()

    @triton.jit
    def _inner_grad_z2(z2, k, v, eta, gamma, beta, rmask, cmask, eps, D: tl.constexpr):
        """G_z2 [BM, BD] of the inner loss from Z2 = A W2 + b2 (bias included): LayerNorm, the residual
        of the reconstruction of V - K, and the LayerNorm backward. Padded rows (eta = 0 there) are set
        to 0 so that no padding reaches an update."""
        xh, rstd = _ln(z2, cmask, eps, D)
        xmask = rmask[:, None] & cmask[None, :]
        resid = tl.where(xmask, gamma[None, :] * xh + beta[None, :] - (v - k), 0.0)
        gxh = gamma[None, :] * (eta[:, None] * resid)
        return tl.where(rmask[:, None], rstd[:, None] * _ln_proj(gxh, xh, cmask, D), 0.0)

    @triton.jit
    def _group_sum2(x, y, xch, flags, rank, ex, P: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr,
                    R: tl.constexpr):
        """Sum two [BM, BD] fp32 tiles over the P programs of one (batch, head) (F split, see README).

        Returns this program's R = BM / P rows of sum(x) (rows rank * R ...: each program finishes
        only its share of the output) and all of sum(y). Each program writes its partials to its part
        of exchange slot ex % 2 of ``xch`` ([2, P, 2, BM, BD] fp32), publishes ex + 1 in its flag
        (release), waits until every flag of the group reaches ex + 1 (acquire), then adds the P
        partials in rank order, so every program gets bitwise the same sum(y). Two slots suffice: a
        program writes slot ex % 2 again only after all flags reached ex + 2, i.e. after every program
        finished reading it at exchange ex. P == 1: (x, y) unchanged.
        """
        if P == 1:
            sx = x
            sy = y
        else:
            rows = tl.arange(0, BM)
            cols = tl.arange(0, BD)
            off = rows[:, None] * BD + cols[None, :]
            tile = BM * BD
            slot = xch + (ex % 2) * (P * 2 * tile)
            tl.store(slot + (rank * 2) * tile + off, x)
            tl.store(slot + (rank * 2 + 1) * tile + off, y)
            # Every thread's partials are written before the flag says so.
            tl.debug_barrier()
            tl.atomic_xchg(flags + rank, ex + 1, sem="release", scope="gpu")
            for r in tl.static_range(P):
                seen = tl.atomic_add(flags + r, 0, sem="acquire", scope="gpu")
                while seen <= ex:
                    seen = tl.atomic_add(flags + r, 0, sem="acquire", scope="gpu")
            hoff = (rank * R + tl.arange(0, R))[:, None] * BD + cols[None, :]
            sx = tl.zeros([R, BD], dtype=tl.float32)
            sy = tl.zeros([BM, BD], dtype=tl.float32)
            for r in tl.static_range(P):
                # .cg: read from L2, where the other programs' stores are; L1 may hold this slot's
                # values from two exchanges ago.
                sx += tl.load(slot + (r * 2) * tile + hoff, cache_modifier=".cg")
                sy += tl.load(slot + (r * 2 + 1) * tile + off, cache_modifier=".cg")
        return sx, sy

    @triton.jit
    def _fwd_kernel(
        Q, K, V, ETA, LNW, LNB, OUT,
        W1, B1, W2, B2,  # work state [B*H, 2, ...] fp32 (W2 transposed: [D, F]), slot 0 holds the initial state
        CW1, CB1, CW2, CB2,  # checkpoints [B*H, C, ...] fp32
        ZS,  # [B*H*P, 2, BM, F // P] fp32: Z1 of the next mini-batch, ping-pong
        XCH,  # [B*H, 2, P, 2, BM, BD] fp32: partial sums exchanged between the P programs of a head
        SYNC,  # [1 + B*H*P] int32, zero: a ticket counter, then one flag per program
        T, H, NMB, G, NCK, eps,
        D: tl.constexpr, F: tl.constexpr, M: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr,
        BF: tl.constexpr, LOWP: tl.constexpr, WITH_OUT: tl.constexpr, SAVE: tl.constexpr, KSPLIT: tl.constexpr,
        P: tl.constexpr, FP: tl.constexpr,
    ):
        """The forward scan (README.md, "Forward"). P programs per (batch, head), each owning FP = F / P
        columns of the hidden layer; one pass over those columns per mini-batch j updates the state and
        computes both the output's Zq2 of j and the Z1, Z2 of j + 1 with the new state, so the P
        programs exchange partial sums once per mini-batch."""
        if P == 1:
            lid = tl.program_id(0).to(tl.int64)
        else:
            # Group by start order, not program id: a program's partners are then the next programs to
            # start, so the groups complete whatever the hardware's launch order (needs only P programs
            # resident at once).
            lid = tl.atomic_add(SYNC, 1).to(tl.int64)
        bh = lid // P
        rank = lid % P
        h = bh % H
        rows = tl.arange(0, BM)
        cols = tl.arange(0, BD)
        cmask = cols < D
        xoff = rows[:, None] * D + cols[None, :]
        gamma = tl.load(LNW + h * D + cols, mask=cmask, other=0.0).to(tl.float32)
        beta = tl.load(LNB + h * D + cols, mask=cmask, other=0.0).to(tl.float32)
        EVEN_D: tl.constexpr = BD == D
        xbase = bh * T * D
        w_sz = D * F
        w1p = W1 + bh * 2 * w_sz
        b1p = B1 + bh * 2 * F
        w2p = W2 + bh * 2 * w_sz
        cw1 = CW1 + bh * NCK * w_sz
        cb1 = CB1 + bh * NCK * F
        cw2 = CW2 + bh * NCK * w_sz
        cb2 = CB2 + bh * NCK * D
        zs = ZS + lid * 2 * BM * FP
        xch = XCH + bh * 2 * P * 2 * BM * BD
        flags = SYNC + 1 + bh * P
        fbase = rank * FP
        zoff = rows[:, None] * FP

        # Prologue: Z1 (to scratch slot 0) and Z2 of mini-batch 0 with the initial state.
        n = tl.minimum(T, M)
        xmask = (rows < n)[:, None] & cmask[None, :]
        k = tl.load(K + xbase + xoff, mask=xmask, other=0.0).to(tl.float32)
        kb = _op(k, LOWP)
        z2 = tl.zeros([BM, BD], dtype=tl.float32)
        for f0 in range(0, FP, BF):
            fl = f0 + tl.arange(0, BF)
            woff = cols[:, None] * F + (fbase + fl)[None, :]
            z1 = _mmx(k, kb, _ldw(w1p + woff, cmask, EVEN_D), KSPLIT, LOWP) + tl.load(b1p + fbase + fl)[None, :]
            tl.store(zs + zoff + fl[None, :], z1)
            a = _gelu(z1, LOWP)
            z2 += _mmx(a, _op(a, LOWP), tl.trans(_ldw(w2p + woff, cmask, EVEN_D)), True, LOWP)
        _zq, z2 = _group_sum2(z2, z2, xch, flags, rank, 0, P, BM, BD, BM // P)
        b2 = tl.load(B2 + bh * 2 * D + cols, mask=cmask, other=0.0)
        # V and eta of the mini-batch, in the inputs' dtype: each step loads the next one's.
        vr = tl.load(V + xbase + xoff, mask=xmask, other=0.0)
        er = tl.load(ETA + bh * T + rows, mask=rows < n, other=0.0)
        tl.debug_barrier()

        # Runtime-bound loops are written as while loops: the interpreter cannot range() over a
        # scalar tensor with numpy >= 2.4, and the compiled code is the same.
        j = 0
        while j < NMB:
            t0 = j * M
            n = tl.minimum(T - t0, M)
            rmask = rows < n
            xmask = rmask[:, None] & cmask[None, :]
            # Ping-pong between the two state slots and the two Z1 slots: each step reads one and
            # writes the other, so no thread overwrites a value another thread has yet to read.
            src = j % 2
            dst = 1 - src
            csave = SAVE & ((j % G) == 0)
            c = j // G
            # Loads first, converted only where used, so that their latency hides under the row-wise
            # work: Q of this mini-batch; K, V and eta of the next one (all rows masked after the last
            # mini-batch: its products are unused).
            n1 = tl.minimum(T - t0 - M, M)
            x1mask = (rows < n1)[:, None] & cmask[None, :]
            if WITH_OUT:
                qr = tl.load(Q + xbase + t0 * D + xoff, mask=xmask, other=0.0)
            knr = tl.load(K + xbase + (t0 + M) * D + xoff, mask=x1mask, other=0.0)
            vn = tl.load(V + xbase + (t0 + M) * D + xoff, mask=x1mask, other=0.0)
            en = tl.load(ETA + bh * T + t0 + M + rows, mask=rows < n1, other=0.0)
            gz2 = _inner_grad_z2(z2 + b2[None, :], k, vr.to(tl.float32), er.to(tl.float32), gamma, beta, rmask,
                                 cmask, eps, D)
            if SAVE:
                tl.store(cb2 + c * D + cols, b2, mask=cmask & csave & (rank == 0))
            b2n = b2 - tl.sum(gz2, 0)
            gz2b = _op(gz2, LOWP)
            if WITH_OUT:
                qb = _op(qr.to(tl.float32), LOWP)
            kn = knr.to(tl.float32)
            knb = _op(kn, LOWP)
            zq2 = tl.zeros([BM, BD], dtype=tl.float32)
            z2 = tl.zeros([BM, BD], dtype=tl.float32)
            for f0 in range(0, FP, BF):
                fl = f0 + tl.arange(0, BF)
                fs = fbase + fl
                woff = cols[:, None] * F + fs[None, :]
                w1 = _ldw(w1p + src * w_sz + woff, cmask, EVEN_D)
                b1 = tl.load(b1p + src * F + fs)
                w2t = _ldw(w2p + src * w_sz + woff, cmask, EVEN_D)
                if SAVE:
                    if csave:
                        _stw(cw1 + c * w_sz + woff, w1, cmask, EVEN_D)
                        tl.store(cb1 + c * F + fs, b1)
                        _stw(cw2 + c * w_sz + woff, w2t, cmask, EVEN_D)
                # This mini-batch's state update (Z1, G_z1 feed the recurrence: _mmx) ...
                a, da = _gelu_d1(tl.load(zs + src * BM * FP + zoff + fl[None, :]), LOWP)
                gz1 = _mmx(gz2, gz2b, w2t, True, LOWP) * da
                w2tn = w2t - _mm(tl.trans(gz2b), a, LOWP)
                w1n = w1 - _mm(tl.trans(kb), gz1, LOWP)
                b1n = b1 - tl.sum(gz1, 0)
                _stw(w1p + dst * w_sz + woff, w1n, cmask, EVEN_D)
                tl.store(b1p + dst * F + fs, b1n)
                _stw(w2p + dst * w_sz + woff, w2tn, cmask, EVEN_D)
                # ... its output with the new state ...
                if WITH_OUT:
                    zq1 = _mm(qb, w1n, LOWP) + b1n[None, :]
                    zq2 += _mm(_gelu(zq1, LOWP), tl.trans(w2tn), LOWP)
                # ... and the next mini-batch's Z1, Z2.
                z1n = _mmx(kn, knb, w1n, KSPLIT, LOWP) + b1n[None, :]
                tl.store(zs + dst * BM * FP + zoff + fl[None, :], z1n)
                an = _gelu(z1n, LOWP)
                z2 += _mmx(an, _op(an, LOWP), tl.trans(w2tn), True, LOWP)
            zq2, z2 = _group_sum2(zq2, z2, xch, flags, rank, j + 1, P, BM, BD, BM // P)
            if WITH_OUT:
                # This program's BM / P output rows (Q reloaded from L1/L2 rather than kept live).
                orow = rank * (BM // P) + tl.arange(0, BM // P)
                ooff = orow[:, None] * D + cols[None, :]
                omask = (orow < n)[:, None] & cmask[None, :]
                xq, _rq = _ln(zq2 + b2n[None, :], cmask, eps, D)
                out = tl.load(Q + xbase + t0 * D + ooff, mask=omask, other=0.0).to(tl.float32)
                out += gamma[None, :] * xq + beta[None, :]
                tl.store(OUT + xbase + t0 * D + ooff, out.to(OUT.dtype.element_ty), mask=omask)
            b2 = b2n
            k = kn
            kb = knb
            vr = vn
            er = en
            # The new state and Z1 are read by other threads in the next step.
            tl.debug_barrier()
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
            z2 += _mm(_gelu(z1, LOWP), tl.trans(w2t), LOWP)
            w1n = _ldw(u_w1 + woff, cmask, EVEN_D)
            w2tn = _ldw(u_w2 + woff, cmask, EVEN_D)
            zq1 = _mm(q, w1n, LOWP) + tl.load(u_b1 + fs)[None, :]
            tl.store(zsq + foff + fs[None, :], zq1)
            zq2 += _mm(_gelu(zq1, LOWP), tl.trans(w2tn), LOWP)
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
            a, da, dda = _gelu_d2(tl.load(zs1 + foff + fs[None, :]), LOWP)
            aq, daq = _gelu_d1(tl.load(zsq + foff + fs[None, :]), LOWP)

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
            a, da = _gelu_d1(tl.load(zs1 + foff + fs[None, :]), LOWP)
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
                _update_step(
                    K + xbase + t0 * D, V + xbase + t0 * D, ETA + pid * T + t0, tl.minimum(T - t0, M),
                    gamma, beta,
                    sw1 + jl * w_sz, sb1 + jl * F, sw2 + jl * w_sz, sb2 + jl * D,
                    sw1 + (jl + 1) * w_sz, sb1 + (jl + 1) * F, sw2 + (jl + 1) * w_sz, sb2 + (jl + 1) * D,
                    zs, eps, D, F, BM, BD, BF, LOWP, BD == D, KSPLIT, XREC,
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


def _fwd_split(programs: int, hidden: int, bf: int) -> int:
    """P, the programs per (batch, head) of the forward (README.md, "Triton backend"): 2 when twice
    the programs still fit the GPU one per SM (each then does half of the F columns and they exchange
    two [BM, D] partial sums per mini-batch), else 1 (then a second wave would cost more than the split
    saves). Always 1 under the interpreter, which runs programs one after another (a program would
    wait for its partner forever)."""
    if _interpreting() or not torch.cuda.is_available():
        return 1
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    if 2 * programs <= sms and (hidden // 2) % bf == 0:
        return 2
    return 1


def _launch_config(kernel: str, dim: int, hidden: int, mini_batch_size: int, dtype: torch.dtype,
                   heads_total: int = 1) -> dict:
    """Tile sizes, warps and (forward) the F split P. BF is the F tile: the largest of 64/32/16 that
    divides F; heads_total is B * H."""
    bf = next(b for b in (64, 32, 16) if hidden % b == 0)
    bm = _next_pow2(mini_batch_size)
    # KSPLIT: K is not exact in bf16 (fp16 inputs), so its low part joins the extended-precision Z1.
    cfg = dict(BM=bm, BD=max(16, _next_pow2(dim)), BF=bf, LOWP=_matmul_mode(dtype), KSPLIT=dtype == torch.float16)
    # Fastest measured on an H100 at D=64, F=256, T=18,048 (the sweep: README.md, "Triton backend"): forward
    # 4 warps, no software pipelining, P = 2 (8 or 16 warps, 2 stages, P = 4 and BF = 128 are all slower);
    # backward 4 warps, 2 stages.
    if kernel == "fwd":
        cfg.update(num_warps=4, num_stages=1, P=_fwd_split(heads_total, hidden, bf))
    else:
        # XREC: the chunk's state recomputation uses the forward's extended-precision products (_mmx).
        # Off: it restarts from the forward's checkpoints every G steps, so plain bf16 drifts little: the
        # max gradient error barely moves and the backward is ~5% faster (README.md, "Triton backend").
        cfg.update(num_warps=4, num_stages=2, XREC=False)
    if CONFIG_OVERRIDE.get(kernel):
        cfg.update(CONFIG_OVERRIDE[kernel])
        assert hidden % cfg["BF"] == 0, "BF must divide F"
        if kernel == "fwd":
            assert cfg["P"] in (1, 2, 4) and (hidden // cfg["P"]) % cfg["BF"] == 0, "P in 1, 2, 4 and BF | F / P"
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
    cfg = _launch_config("fwd", dim, hidden, mini_batch_size, q.dtype, bsz * heads)
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
    split = cfg.pop("P")
    zs = _empty(bsz * heads * split, 2, cfg["BM"], hidden // split, device=dev)
    xch = _empty(bsz * heads, 2, split, 2, cfg["BM"], cfg["BD"], device=dev) if split > 1 else zs
    sync = torch.zeros(1 + bsz * heads * split, device=dev, dtype=torch.int32)
    _launch(
        _fwd_kernel,
        (bsz * heads * split,),
        (q, k, v, eta, ln_weight.contiguous(), ln_bias.contiguous(), out, *ws, *ck_args, zs, xch, sync,
         seq_len, heads, n_mb, checkpoint_every, max(n_ck, 1), float(eps)),
        dict(D=dim, F=hidden, M=mini_batch_size, WITH_OUT=with_out, SAVE=save_state, P=split, FP=hidden // split),
        cfg,
    )
    return out, ck


# F is zero-padded to a multiple of this before the kernels run: on GPUs F tiles below 64 columns
# fail (README.md, "Known bug"), so F = 48 runs as 64 there. Exact, not an approximation: padded
# columns of W1 and b1 and rows of W2 start at zero and stay zero (their Z1 is 0, so their G_z1 =
# (G_z2 W2_pad^T) g'(0) = 0 and their A = g(0) = 0 leaves W2_pad unchanged), they add nothing to
# Z2, and every gradient path through them carries a factor A_pad or W2_pad, both zero. Tests set
# the interpreter's entry to 64 to run the padded path on the CPU.
F_MULTIPLE = {"gpu": 64, "interpreter": 16}


def _padded_hidden(hidden: int) -> int:
    m = F_MULTIPLE["interpreter" if _interpreting() else "gpu"]
    return -(-hidden // m) * m


def _pad_f(x: Tensor, fp: int, dim: int) -> Tensor:
    """x zero-padded along ``dim`` (negative) from F to fp entries."""
    pad = fp - x.shape[dim]
    if pad == 0:
        return x
    widths = [0, 0] * (-dim - 1) + [0, pad]
    return torch.nn.functional.pad(x, widths)


def forward(q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2, mini_batch_size: int, eps: float,
            checkpoint_every: int, save_state: bool):
    """Returns out [B,H,T,D] (dtype of q) and the fp32 checkpoints W1 [B,H,C,D,F], b1 [B,H,C,F],
    W2 [B,H,C,F,D], b2 [B,H,C,D], the state at the start of every checkpoint_every-th mini-batch
    (C = ceil(n_minibatches / checkpoint_every), or 0 without save_state)."""
    hidden = w1.shape[-1]
    fp = _padded_hidden(hidden)
    w1, b1, w2 = _pad_f(w1, fp, -1), _pad_f(b1, fp, -1), _pad_f(w2, fp, -2)
    out, (cw1, cb1, cw2t, cb2) = _run_forward(q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2, mini_batch_size,
                                              eps, checkpoint_every, save_state, with_out=True)
    if fp != hidden:
        cw1, cb1, cw2t = cw1[..., :hidden].contiguous(), cb1[..., :hidden].contiguous(), cw2t[..., :hidden]
    # The kernels keep W2 transposed ([D, F]); the op's checkpoints are [F, D] (a copy, ~1 ms at T=351k).
    return out, (cw1, cb1, cw2t.transpose(-1, -2).contiguous(), cb2)


def backward(grad_out, q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2, states, mini_batch_size: int,
             eps: float, checkpoint_every: int):
    """Gradients (dq, dk, dv, deta, dln_weight, dln_bias, dw1, db1, dw2, db2), each in its input's
    dtype and shape. ``states`` is what ``forward`` returned; if it holds no checkpoint (C = 0) the
    checkpoints are recomputed first."""
    bsz, heads, seq_len, dim = q.shape
    hidden0 = w1.shape[-1]
    hidden = _padded_hidden(hidden0)  # zero-padded F (see F_MULTIPLE); the gradients are cut back below
    w1, b1, w2 = _pad_f(w1, hidden, -1), _pad_f(b1, hidden, -1), _pad_f(w2, hidden, -2)
    states = (_pad_f(states[0], hidden, -1), _pad_f(states[1], hidden, -1), _pad_f(states[2], hidden, -2),
              states[3])
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
    dw1, db1, dw2 = dw1[..., :hidden0], db1[..., :hidden0], dw2[..., :hidden0].transpose(-1, -2)
    return (
        dq, dk, dv, deta,
        dgam.sum(0).to(ln_weight.dtype), dbet.sum(0).to(ln_bias.dtype),
        dw1.to(w1.dtype), db1.to(b1.dtype), dw2.to(w2.dtype), db2.to(b2.dtype),
    )
