"""Root Definitions: the only object workspace.yaml loads."""

import dagster as dg

defs = dg.Definitions()
