"""The GPU step benchmark's CPU smoke mode (--tiny): both models time real sampler steps, projections fill in."""

from __future__ import annotations

from ..benchmark_scripts import load_benchmark


def test_bench_generate_step_tiny(capsys):
    bench = load_benchmark("bench_generate_step")
    rows = bench.main(["--tiny", "--seconds", "3", "6", "--repeats", "1", "--project", "9",
                       "--full-max-seconds", "3"])
    by_len = {r["seconds"]: r for r in rows}
    assert [r["frames"] for r in rows] == [13, 25, 37]
    assert by_len[3]["transformed"] > 0 and by_len[3]["full"] > 0 and by_len[6]["transformed"] > 0
    assert by_len[6]["full"] is None and "full-max-seconds" in by_len[6]["full_note"]
    assert by_len[9]["transformed_projected"] > 0 and "full_projected" not in by_len[9]  # one full point: no fit
    out = capsys.readouterr().out
    assert "| 9 s | 37 | 270 |" in out and "(projected; not run)" in out and "TTT backend reference" in out
