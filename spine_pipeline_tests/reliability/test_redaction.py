"""Invariant 5, unit level: the client, the resources and the stores never show a secret.

The end-to-end scan (demo + short soak, every log line and every byte written) is in
`test_secrets.py`; these tests pin the reprs and exception texts that such a scan relies on.
"""

import os

import dagster as dg
import pytest

from spine_pipeline.defs.resources import SpineResource, build_resources
from spine_pipeline.simulator import SimulatorConfig
from spine_pipeline.spine import AsyncSpineClient, SpineClient, SpineError
from spine_pipeline.spine.settings import SpineSettings

CANARY = "sk_spine_REDACTIONCANARY7f3a9"


def test_resolved_spine_resource_never_shows_its_key():
    resource = SpineResource(api_key=CANARY)
    for text in (repr(resource), str(resource), f"{resource}", f"{resource!r}"):
        assert CANARY not in text and "***" in text
    assert resource.api_key == CANARY  # still usable


def test_spine_resource_inside_a_run_is_redacted(monkeypatch):
    monkeypatch.setenv("SPINE_API_KEY", CANARY)
    seen = {}

    @dg.asset
    def probe(spine: SpineResource) -> None:
        seen["repr"] = repr(spine)
        seen["str"] = str(spine)
        seen["usable"] = spine.api_key == CANARY

    resources = build_resources()
    assert CANARY not in repr(resources["spine"])  # the EnvVar, unresolved, shows its name
    with dg.instance_for_test() as instance:
        assert dg.materialize([probe], resources=resources, instance=instance).success
    assert seen["usable"]
    assert CANARY not in seen["repr"] and CANARY not in seen["str"]


def test_client_repr_settings_and_errors_hide_the_key(simulator):
    wrong = CANARY + "_wrong"
    with SpineClient(api_key=wrong, base_url=simulator.base_url) as client:
        assert wrong not in repr(client)
        assert wrong not in repr(SpineSettings.resolve(api_key=wrong))
        with pytest.raises(SpineError) as caught:
            client.get_run("00000000-0000-4000-8000-000000000000")
    assert caught.value.status_code == 401
    assert wrong not in str(caught.value) and wrong not in repr(caught.value)
    assert repr(AsyncSpineClient(api_key=wrong, base_url=simulator.base_url)).count("***") == 1


def test_simulator_config_repr_hides_its_key():
    assert CANARY not in repr(SimulatorConfig(api_key=CANARY))


def test_nothing_in_the_process_environment_leaks_through_resource_reprs(monkeypatch):
    monkeypatch.setenv("SPINE_API_KEY", CANARY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-canary-secret-ffff")
    text = " ".join(repr(r) for r in build_resources().values())
    assert CANARY not in text and "aws-canary-secret-ffff" not in text
    assert os.environ["SPINE_API_KEY"] == CANARY
