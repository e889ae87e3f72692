"""The fault-injection soak: the real Dagster path under every fault, checked against truth.

`run_soak(SoakConfig(runs=100, backend="local"))` returns a `SoakReport`; `report.ok` is the
verdict and `spine_pipeline.soak.report.render(report)` its Markdown tables. `make soak` runs
`python -m spine_pipeline.soak run` (1,000 runs on both backends). See docs/reliability.md.
"""

from spine_pipeline.soak.config import SoakConfig, api_fault_spec
from spine_pipeline.soak.harness import SoakReport, run_soak

__all__ = ["SoakConfig", "SoakReport", "api_fault_spec", "run_soak"]
