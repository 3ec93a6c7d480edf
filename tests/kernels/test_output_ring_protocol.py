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


def _run(heads, n_mb, ring, workers, seed, release_first=True):
    st = {"ready": [0] * heads, "done": [[0] * ring for _ in range(heads)], "ring": [[-1] * ring for _ in range(heads)],
          "ticket": 0, "outputs": set()}
    procs = [_scan(h, n_mb, ring, st) for h in range(heads)]
    procs += [_worker(heads, n_mb, ring, st, release_first) for _ in range(workers)]
    waits = {}
    for p in procs:
        try:
            waits[p] = next(p)
        except StopIteration:
            pass
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
