"""``benchmarks/bench_service.py --http`` at toy size: the comparison really goes through a live
``sketchreid serve`` process (its own /metrics count the requests), and reports both paths."""

from __future__ import annotations

import importlib.util
import math
import os
import re
from pathlib import Path
from types import ModuleType

import pytest

SEARCHES = 2
ROW = re.compile(
    r"^\s*(\d+)\s+(no|yes)\s+([\d.]+)/([\d.]+)\s+([\d.]+)/([\d.]+)\s+(\d+)\s+([\d.]+)\s*$"
)
INGEST = re.compile(r"in-process ([\d.]+) crops/s \((\d+) files\), live HTTP ([\d.]+) crops/s "
                    r"\((\d+) files, (\d+) batch requests served")  # fmt: skip


def _load_bench() -> ModuleType:
    """``benchmarks/bench_service.py`` by path."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_service.py"
    spec = importlib.util.spec_from_file_location("bench_service", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_http_option_compares_against_a_live_server(
    bundle_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    bench = _load_bench()
    # 6 crops in batches: 3 in-process, then 3 over HTTP; the gallery (7 items) does not grow,
    # so one server serves both the batch uploads and the searches.
    argv = ["--model", str(bundle_dir), "--galleries", "7", "--api-items", "7", "--single", "1",
            "--batch", "3", "--searches", str(SEARCHES), "--http"]  # fmt: skip
    # This process's PyTorch count differs from a fresh server's default (as after another
    # test changed it): the server must still run the model with the in-process app's count.
    before = torch.get_num_threads()
    torch.set_num_threads(1 if (os.cpu_count() or 1) > 1 else 2)
    try:
        assert bench.main(argv) == 0
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    table = out.split("in-process (TestClient) against live HTTP", 1)[1]
    rows = [m.groups() for line in table.splitlines() if (m := ROW.match(line))]
    assert [(r[0], r[1]) for r in rows] == [("7", "no"), ("7", "yes")], out
    for row in rows:
        in_p50, in_p95, http_p50, http_p95, ratio = map(float, (*row[2:6], row[7]))
        assert int(row[6]) == SEARCHES, out  # searches the server itself counted
        assert 0 < in_p50 <= in_p95 and 0 < http_p50 <= http_p95, out
        assert math.isclose(ratio, http_p50 / in_p50, rel_tol=0.01, abs_tol=0.001), out
    ingest = INGEST.search(table)
    assert ingest is not None, out
    rate_in, files_in, rate_http, files_http, batches = ingest.groups()
    assert (int(files_in), int(files_http), int(batches)) == (3, 3, 1), out
    assert float(rate_in) > 0 and float(rate_http) > 0, out
