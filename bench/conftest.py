"""pytest configuration of the benchmark suite: ``pytest bench/ --benchmark-only``.

The benchmarks never run as tests: without ``--benchmark-only`` every item here is skipped, so that a
``pytest`` that happens to collect ``bench/`` (CI runs ``tests/``, the ``testpaths`` of pyproject.toml) costs
nothing. ``--bench-quick`` keeps the acceptance shapes only; ``-k`` filters as usual, e.g.
``-k "C12 and reference and fwd"``.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bench-quick", action="store_true", help="benchmark the acceptance shapes only")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("benchmark_only", default=False):
        return
    skip = pytest.mark.skip(reason="benchmarks run only with `pytest bench/ --benchmark-only`")
    for item in items:
        if "benchmark" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)
