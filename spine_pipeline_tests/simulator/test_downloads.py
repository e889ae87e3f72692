"""Pre-signed artifact URLs: no key needed, fresh per GET, expiring, correct headers and bytes."""

from __future__ import annotations

import hashlib
from urllib.parse import parse_qs, urlsplit

import httpx

from spine_pipeline_tests.simulator.conftest import Api


def _artifacts(api: Api, prompt: str = "Board deck on pricing [scenario:completed]", **kw):
    run = api.finished(prompt, **kw)
    artifacts = run["result"]["artifacts"]
    assert artifacts, run
    return run, artifacts


def test_download_without_key_with_exact_headers(api):
    run, artifacts = _artifacts(api, template="slides")
    truth = api.sim.world.ground_truth(run["run_id"])
    for artifact in artifacts:
        url = artifact["download_url"]
        assert url.startswith(api.sim.base_url + "/files/")
        response = httpx.get(url)  # no X-API-KEY
        assert response.status_code == 200
        expected = truth.artifacts[artifact["id"]]
        assert response.content == expected.content
        assert hashlib.sha256(response.content).hexdigest() == expected.sha256
        assert int(response.headers["content-length"]) == len(response.content) == expected.size
        assert response.headers["content-type"] == expected.content_type
        assert response.headers["x-request-id"]
        if "size_bytes" in artifact:
            assert artifact["size_bytes"] == expected.size
        assert 1_000 < expected.size < 400_000


def test_each_get_mints_fresh_urls_and_node_url_points_at_same_file(api):
    run, artifacts = _artifacts(api)
    again = api.get(run["run_id"])["result"]["artifacts"]
    assert [a["id"] for a in again] == [a["id"] for a in artifacts]
    assert all(
        a["download_url"] != b["download_url"] for a, b in zip(artifacts, again, strict=True)
    )
    nodes = {n["id"]: n for n in api.dag(run["canvas_id"])["nodes"]}
    for artifact in artifacts:
        node_url = nodes[artifact["id"]]["url"]
        assert node_url and node_url != artifact["download_url"]
        assert httpx.get(node_url).content == httpx.get(artifact["download_url"]).content
    # Node URLs are stable between DAG reads within a TTL window (so archives can be compared).
    assert api.dag(run["canvas_id"])["nodes"] == list(nodes.values())


def test_urls_expire_on_the_simulator_clock(make_simulator):
    sim = make_simulator(url_ttl_seconds=60)
    api = Api(sim)
    run, artifacts = _artifacts(api)
    url = artifacts[0]["download_url"]
    expires = int(parse_qs(urlsplit(url).query)["expires"][0])
    assert 55 <= expires - sim.world.now() <= 61
    node_url = next(
        n["url"] for n in api.dag(run["canvas_id"])["nodes"] if n["id"] == artifacts[0]["id"]
    )
    assert httpx.get(url).status_code == 200
    sim.world.advance(61)
    expired = httpx.get(url)
    assert expired.status_code == 403
    assert expired.headers["content-type"].startswith("application/xml")
    assert b"<Code>AccessDenied</Code>" in expired.content and b"expired" in expired.content
    assert httpx.get(node_url).status_code == 403
    fresh = api.get(run["run_id"])["result"]["artifacts"][0]["download_url"]
    assert httpx.get(fresh).status_code == 200
    fresh_node = next(
        n["url"] for n in api.dag(run["canvas_id"])["nodes"] if n["id"] == artifacts[0]["id"]
    )
    assert fresh_node != node_url and httpx.get(fresh_node).status_code == 200
    api.http.close()


def test_tampered_or_unknown_urls_are_refused(api):
    _, artifacts = _artifacts(api)
    url = artifacts[0]["download_url"]
    tampered = url.replace("expires=", "expires=9")
    response = httpx.get(tampered)
    assert response.status_code == 403 and b"SignatureDoesNotMatch" in response.content
    assert httpx.get(url.split("?")[0]).status_code == 403
    assert httpx.get(api.sim.base_url + "/files/nothing?expires=1&sig=x").status_code == 403


def test_artifact_size_scale(make_simulator):
    big = Api(make_simulator(seed=2, artifact_size_scale=4.0))
    small = Api(make_simulator(seed=2))
    sizes_big = [a["size_bytes"] for a in _artifacts(big)[1] if "size_bytes" in a]
    sizes_small = [a["size_bytes"] for a in _artifacts(small)[1] if "size_bytes" in a]
    assert sum(sizes_big) > 3 * sum(sizes_small)
    big.http.close()
    small.http.close()


def test_head_reports_size_without_body(api):
    _, artifacts = _artifacts(api)
    response = httpx.head(artifacts[0]["download_url"])
    full = httpx.get(artifacts[0]["download_url"])
    assert response.status_code == 200 and response.content == b""
    assert int(response.headers["content-length"]) == len(full.content)
