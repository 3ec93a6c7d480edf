"""The decoupled forward's ring protocol (cuda_sm90/ttt_mlp_fwd.cu, v9), as a model, under random schedules.

The kernel itself needs an H100 (its GPU tests run the real thing); this checks the protocol it
implements on the CPU, with every interleaving the scheduler can produce:
- scan h, step j: publishes `ready[h] = j` at the top of step j (tiles < j are in the ring), waits
  until `done[h][j % R] > j - R` (the tile that used the slot before has been read), stores tile j
  into slot j % R; after its last step publishes `ready[h] = n_mb`;
- worker: takes tickets i = j * heads + h in order; for each, waits for `ready[h] > j`, starts an
  asynchronous copy of the slot, and at the top of its loop waits for that copy, releases
  `done[h][slot] = j + 1`, only then takes and waits for the next ticket (whose copy runs while this
  tile is computed).
A copy that reads a slot after the scan refilled it, or a schedule where nothing can move before
every tile is done, fails. The order the kernel had first (waiting for the next ticket's state
before releasing this tile's slot) deadlocks here with one head and several workers, as it did in
the design review.

The v10 worker (output_worker) overlaps its signalling with its work, so its threads run
concurrently here: it takes the first two tickets at once and, at the top of each tile, the ticket
of the tile after next (held, not waited for); its fetch thread waits for the next tile's state
and starts that copy while, independently, its done thread releases the current tile's slot; both
join at the CTA barrier that closes the tile. If the release were ordered after the fetch thread's
wait instead (e.g. behind a barrier the blocked fetch thread must reach), it deadlocks here too.
"""

from __future__ import annotations

import random

import pytest


class Deadlock(Exception):
    pass


def _scan(h, n_mb, ring, st):
    """Yields a predicate to wait on before each action; each action runs when the predicate holds."""
    for j in range(n_mb):
        if j >= 1:
            yield lambda: True
            st["ready"][h] = j
        if j >= ring:
            yield lambda j=j: st["done"][h][j % ring] >= j - ring + 1
        yield lambda: True
        st["ring"][h][j % ring] = j
    yield lambda: True
    st["ready"][h] = n_mb


def _worker(heads, n_mb, ring, st, release_first):
    n_tiles = heads * n_mb
    copies = {}  # buffer -> (h, j, value read), the copy landing at some later action

    def fetch(b):
        i = st["ticket"]
        st["ticket"] += 1
        if i >= n_tiles:
            return i
        j, h = divmod(i, heads)
        yield lambda: st["ready"][h] >= j + 1
        yield lambda: True  # the asynchronous copy lands at any later point before it is waited for
        copies[b] = (h, j, st["ring"][h][j % ring])
        return i

    b = 0
    i = yield from fetch(b)
    while i < n_tiles:
        j, h = divmod(i, heads)
        if release_first:
            assert copies[b] == (h, j, j), f"tile ({j}, {h}) read a refilled slot: {copies[b]}"
            yield lambda: True
            st["done"][h][j % ring] = j + 1
            nxt = yield from fetch(b ^ 1)
        else:  # the first design: the next tile's state is waited for before this slot is freed
            nxt = yield from fetch(b ^ 1)
            assert copies[b] == (h, j, j), f"tile ({j}, {h}) read a refilled slot: {copies[b]}"
            yield lambda: True
            st["done"][h][j % ring] = j + 1
        st["outputs"].add((j, h))
        i, b = nxt, b ^ 1


def _worker_v10(heads, n_mb, ring, st, release_behind_wait=False):
    """The v10 worker CTA: its main line (all threads, CTA barriers) and, per tile, two threads that run
    concurrently with each other (spawned as processes, joined by the tile's closing barrier)."""
    n_tiles = heads * n_mb
    copies = {}  # buffer -> (h, j, value read): the bulk copy has landed (its mbarrier completed)

    def take():
        i = st["ticket"]
        st["ticket"] += 1
        return i

    def bulk_copy(b, i):  # reads the slot at some point after its issue, then completes the mbarrier
        j, h = divmod(i, heads)
        yield lambda: True
        copies[b] = (h, j, st["ring"][h][j % ring])

    def fetch(b, i):  # FETCH_THREAD: (polls without blocking, then) waits for tile i's state, issues its copy
        j, h = divmod(i, heads)
        yield lambda: st["ready"][h] >= j + 1
        st["spawn"].append(bulk_copy(b, i))

    def release(i):  # DONE_THREAD
        j, h = divmod(i, heads)
        yield lambda: True
        st["done"][h][j % ring] = j + 1

    def concurrently(*threads):  # the predicate of the barrier that joins them
        left = [len(threads)]

        def run(t):
            yield from t
            left[0] -= 1

        st["spawn"].extend(run(t) for t in threads)
        return lambda: left[0] == 0

    i, i1 = take(), take()  # one atomicAdd of 2
    if i < n_tiles:
        yield from fetch(0, i)  # nothing held yet: the first state is waited for in line
    b = 0
    while i < n_tiles:
        j, h = divmod(i, heads)
        yield lambda b=b: b in copies  # the top: every thread waits for this tile's copy (mbarrier)
        assert copies.pop(b) == (h, j, j), f"tile ({j}, {h}) read a refilled slot"
        more = i1 < n_tiles
        i2 = take() if more else i1  # held until the next tile; never waited for before then
        if release_behind_wait:  # the order v10 avoids: the release waits for the fetch thread
            if more:
                yield from fetch(b ^ 1, i1)
            yield from release(i)
        else:
            yield concurrently(release(i), *([fetch(b ^ 1, i1)] if more else []))
        st["outputs"].add((j, h))
        i, i1, b = i1, i2, b ^ 1


def _run(heads, n_mb, ring, workers, seed, release_first=True, v10=False, release_behind_wait=False):
    st = {"ready": [0] * heads, "done": [[0] * ring for _ in range(heads)], "ring": [[-1] * ring for _ in range(heads)],
          "ticket": 0, "outputs": set(), "spawn": []}
    procs = [_scan(h, n_mb, ring, st) for h in range(heads)]
    if v10:
        procs += [_worker_v10(heads, n_mb, ring, st, release_behind_wait) for _ in range(workers)]
    else:
        procs += [_worker(heads, n_mb, ring, st, release_first) for _ in range(workers)]
    waits = {}

    def start(p):
        try:
            waits[p] = next(p)
        except StopIteration:
            pass

    for p in procs:
        start(p)
    rng = random.Random(seed)
    while waits:
        runnable = [p for p, cond in waits.items() if cond()]
        if not runnable:
            raise Deadlock(f"{len(waits)} processes wait, {len(st['outputs'])} of {heads * n_mb} tiles done")
        p = rng.choice(runnable)
        try:
            waits[p] = p.send(None)
        except StopIteration:
            del waits[p]
        while st["spawn"]:  # threads a worker started in that action
            start(st["spawn"].pop())
    return st["outputs"]


@pytest.mark.parametrize("heads, n_mb, workers", [(1, 40, 9), (3, 25, 2), (5, 12, 1), (4, 30, 13), (2, 1, 4)])
@pytest.mark.parametrize("seed", range(6))
def test_every_tile_is_computed_from_its_own_state(heads, n_mb, workers, seed):
    outputs = _run(heads, n_mb, ring=4, workers=workers, seed=seed)
    assert outputs == {(j, h) for j in range(n_mb) for h in range(heads)}


def test_waiting_for_the_next_state_while_holding_a_slot_deadlocks():
    """The first design: one head, 9 workers, 4 slots. Some schedule deadlocks (the kernel would hang)."""
    outcomes = set()
    for seed in range(40):
        try:
            _run(1, 40, ring=4, workers=9, seed=seed, release_first=False)
            outcomes.add("finished")
        except Deadlock:
            outcomes.add("deadlock")
    assert "deadlock" in outcomes


@pytest.mark.parametrize("heads, n_mb, workers",
                         [(1, 40, 9), (3, 25, 2), (5, 12, 1), (4, 30, 13), (2, 1, 4), (1, 60, 65)])
@pytest.mark.parametrize("seed", range(6))
def test_v10_worker_computes_every_tile_from_its_own_state(heads, n_mb, workers, seed):
    outputs = _run(heads, n_mb, ring=4, workers=workers, seed=seed, v10=True)
    assert outputs == {(j, h) for j in range(n_mb) for h in range(heads)}


def test_v10_release_ordered_after_the_fetch_wait_deadlocks():
    """Why DONE_THREAD's release must not depend on FETCH_THREAD (which may block on the next state)."""
    outcomes = set()
    for seed in range(40):
        try:
            _run(1, 40, ring=4, workers=9, seed=seed, v10=True, release_behind_wait=True)
            outcomes.add("finished")
        except Deadlock:
            outcomes.add("deadlock")
    assert "deadlock" in outcomes
