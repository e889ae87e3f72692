"""Resources cost nothing they do not need: a sensor tick initialises them every time."""

import boto3
import dagster as dg

from spine_pipeline.defs.resources import ArchiveResource, LazyS3Resource


def test_a_tick_on_a_local_archive_builds_no_boto3_client(pipeline, monkeypatch):
    built: list[str] = []
    real = boto3.session.Session.client

    def counting(self, *args, **kwargs):
        built.append(args[0] if args else kwargs.get("service_name", "?"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(boto3.session.Session, "client", counting)
    (run_id,) = pipeline.submit("tick without S3")
    pipeline.tick()
    pipeline.wait_terminal([run_id])
    tick = pipeline.tick()
    assert tick.run_requests  # the tick did its work (polled, asked for an archive run)
    assert built == []


def test_an_s3_archive_gets_its_client_when_it_opens_the_store(monkeypatch):
    import dagster_aws.s3.resources as dagster_s3

    built: list[dict] = []
    real = dagster_s3.construct_s3_client

    def counting(**kwargs):
        built.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(dagster_s3, "construct_s3_client", counting)
    s3 = LazyS3Resource(endpoint_url="http://127.0.0.1:1", region_name="us-east-1")
    archive = ArchiveResource(uri="s3://bucket/prefix", s3=s3)
    with dg.build_resources({"s3": s3, "archive": archive}) as resources:
        assert built == []  # initialising the resources built nothing
        assert isinstance(resources.s3, LazyS3Resource)  # the resource, not a client
        store = resources.archive.store()
    assert [k["endpoint_url"] for k in built] == ["http://127.0.0.1:1"]
    assert store.endpoint == "http://127.0.0.1:1"
