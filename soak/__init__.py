"""The fault-injection soak: the real Dagster path under every fault, checked against truth.

A test harness, not part of the installed package (like `benchmarks/`): run it from the
project root. `run_soak(SoakConfig(runs=100, backend="local"))` returns a `SoakReport`;
`report.ok` is the verdict and `soak.report.render(report)` its Markdown tables. `make soak`
runs `python -m soak run` (1,000 runs on both backends). See docs/reliability.md.
"""

from soak.config import SoakConfig, api_fault_spec
from soak.harness import run_soak
from soak.report import SoakReport

__all__ = ["SoakConfig", "SoakReport", "api_fault_spec", "run_soak"]
