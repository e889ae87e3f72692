"""The embedded Spine simulator: a faithful, deterministic, fault-injecting fake of the Spine API.

See docs/simulator.md. Typical use::

    with SimulatorServer(SimulatorConfig(seed=1)) as sim:
        client = SpineClient(api_key=sim.api_key, base_url=sim.base_url)
"""

from .config import FaultRule, SimulatorConfig, parse_faults, parse_run_seconds
from .server import SimulatorServer, serve_forever
from .webhooks import WebhookDelivery, WebhookSender
from .world import ArtifactTruth, CreateForm, RunTruth, World

__all__ = [
    "ArtifactTruth",
    "CreateForm",
    "FaultRule",
    "RunTruth",
    "SimulatorConfig",
    "SimulatorServer",
    "WebhookDelivery",
    "WebhookSender",
    "World",
    "parse_faults",
    "parse_run_seconds",
    "serve_forever",
]
