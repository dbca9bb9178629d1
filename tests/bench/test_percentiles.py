"""The benchmarks' quantiles: a scenario whose tasks all failed before starting is
reported as such, not a crash that loses the whole run."""

from __future__ import annotations

from bench.system import ms, pct


def test_quantiles_of_samples() -> None:
    values = [float(v) for v in range(1, 101)]
    assert pct(values, 0.5) == 51.0
    assert pct(values, 0.99) == 100.0
    assert ms(0.0125) == "12.5 ms"


def test_no_samples_reads_as_none_started() -> None:
    assert ms(pct([], 0.99)) == "none started"
