"""A custom script's output kept for the task's log: bounded, stderr marked, the last
stderr line kept for the failure reason; and the simulated screen a valid PNG."""

from __future__ import annotations

import io
import struct

from PIL import Image

from fleet_agent.program import MAX_OUTPUT_BYTES, MAX_PIECE, Output
from fleet_agent.remote import png


def test_output_is_bounded_and_says_what_it_dropped() -> None:
    output = Output()
    output.add("x" * (MAX_OUTPUT_BYTES - 10), "stdout")
    output.add("y" * 100, "stdout")
    assert output.total == MAX_OUTPUT_BYTES
    assert output.dropped == 90
    pieces = []
    while output.pending:
        pieces.append(output.take())
    assert all(len(p.encode()) <= MAX_PIECE for p in pieces)
    assert "".join(pieces) == "x" * (MAX_OUTPUT_BYTES - 10) + "y" * 10


def test_stderr_lines_are_marked_and_the_last_one_kept() -> None:
    output = Output()
    output.add("first\n", "stdout")
    output.add("oops\nworse\n", "stderr")
    assert output.take() == "first\n[stderr] oops\n[stderr] worse\n"
    assert output.last_stderr == "worse"


def test_the_simulated_screen_is_a_png_of_its_size() -> None:
    data = png(64, 32, seed=3, noise_rows=8)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (64, 32)
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.size == (64, 32)
