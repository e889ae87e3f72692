"""Our signing and verification agree with the official SDK's (spine-sdk 0.2.0, unchanged).

The SDK only verifies (`client.webhooks.construct_event`, `_verify_and_parse`); its idea of
a signature is read out of that verifier: the `expected` value it compares with. So both
directions are covered: `sign` -> SDK verifies, SDK's expected value -> `verify` accepts,
and on a set of header variants both accept or both refuse, except where ours is stricter
on purpose (listed, and the SDK still accepts them, so the list cannot go stale silently).
"""

from __future__ import annotations

import hmac
import time
from types import SimpleNamespace

import pytest
from spine import SpineClient, WebhookSignatureError
from spine.resources import webhooks as sdk_webhooks

from spine_pipeline.webhooks.signature import SignatureError, sign, signature_hex, verify
from spine_pipeline_tests.webhooks.helpers import SECRET, VECTOR_BODY, body_of, envelope

SECRETS = [SECRET, "whsec_" + "x" * 40, "whsec_grüße_unicode"]


@pytest.fixture
def sdk():
    with SpineClient(api_key="sk_spine_conformance", base_url="http://127.0.0.1:9") as client:
        yield client.webhooks


def _bodies() -> list[bytes]:
    return [
        VECTOR_BODY,
        body_of(envelope("run.completed", "06bb6cee-1")),
        body_of(envelope("run.failed", "r2", error="boom")),
        body_of(envelope("run.started", "r3", note="naïve ünïcödé \u2013 \u2713")),
        body_of(envelope("webhook.ping", None)),
    ]


@pytest.mark.parametrize("secret", SECRETS)
def test_our_signature_verifies_with_the_sdk(sdk, secret: str) -> None:
    for body in _bodies():
        now = int(time.time())
        event = sdk.construct_event(payload=body, sig_header=sign(secret, now, body), secret=secret)
        assert event.id.startswith("evt_")
        # And a wrong secret or a changed body fails there too.
        with pytest.raises(WebhookSignatureError):
            sdk.construct_event(
                payload=body + b" ", sig_header=sign(secret, now, body), secret=secret
            )


def _sdk_expected(monkeypatch: pytest.MonkeyPatch, body: bytes, t: int, secret: str) -> str:
    """The v1 the SDK's verifier computes for (t, body, secret): its notion of signing."""
    seen: list[str] = []

    def spy(expected: str, given: str) -> bool:
        seen.append(expected)
        return False

    monkeypatch.setattr(sdk_webhooks, "hmac", SimpleNamespace(new=hmac.new, compare_digest=spy))
    monkeypatch.setattr(sdk_webhooks.time, "time", lambda: float(t))
    with pytest.raises(WebhookSignatureError):
        sdk_webhooks._verify_and_parse(body, f"t={t},v1=00", secret, 300)
    monkeypatch.undo()
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize("secret", SECRETS)
def test_the_sdk_signature_verifies_with_ours(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    for body in _bodies():
        t = int(time.time())
        expected = _sdk_expected(monkeypatch, body, t, secret)
        assert expected == signature_hex(secret, t, body)
        assert verify(f"t={t},v1={expected}", body, [secret], now=t) == t


def _sdk_accepts(sdk, header: str, body: bytes) -> bool:
    try:
        sdk.construct_event(payload=body, sig_header=header, secret=SECRET)
    except WebhookSignatureError:
        return False
    return True


def _ours_accepts(header: str, body: bytes) -> bool:
    try:
        verify(header, body, [SECRET], now=time.time())
    except SignatureError:
        return False
    return True


def _variants(t: int, v1: str) -> dict[str, str]:
    other = signature_hex("whsec_other", t, VECTOR_BODY)
    return {
        "plain": f"t={t},v1={v1}",
        "v1 first": f"v1={v1},t={t}",
        "spaces around parts": f" t={t} , v1={v1} ",
        "two v1, second valid": f"t={t},v1={other},v1={v1}",
        "unknown schemes": f"t={t},v0=abc,v1={v1},v9=x",
        "empty parts": f",,t={t},,v1={v1},",
        "part without =": f"t={t},junk,v1={v1}",
        "leading zero": f"t=0{t},v1={v1}",
        "no t": f"v1={v1}",
        "no v1": f"t={t}",
        "empty v1": f"t={t},v1=",
        "wrong v1 only": f"t={t},v1={other}",
        "upper-case hex": f"t={t},v1={v1.upper()}",
        "stale": f"t={t - 301},v1={signature_hex(SECRET, t - 301, VECTOR_BODY)}",
        "future": f"t={t + 301},v1={signature_hex(SECRET, t + 301, VECTOR_BODY)}",
        "edge of window": f"t={t - 299},v1={signature_hex(SECRET, t - 299, VECTOR_BODY)}",
        "t not an integer": f"t={t}.5,v1={v1}",
        "t spelled in letters": f"t=now,v1={v1}",
        "space inside v1": f"t={t},v1= {v1}",
        "two t, same value": f"t={t},t={t},v1={v1}",
        "plus sign": f"t=+{t},v1={v1}",
    }


# Accepted by the SDK's int()/last-wins parsing, refused here on purpose (module docstring
# of spine_pipeline/webhooks/signature.py): two `t`, a `+` sign.
STRICTER = {"two t, same value", "plus sign"}


def test_both_verifiers_agree_on_header_variants(sdk) -> None:
    t = int(time.time())
    v1 = signature_hex(SECRET, t, VECTOR_BODY)
    disagreements = {}
    for name, header in _variants(t, v1).items():
        theirs, ours = _sdk_accepts(sdk, header, VECTOR_BODY), _ours_accepts(header, VECTOR_BODY)
        if theirs != ours:
            disagreements[name] = (theirs, ours)
    assert disagreements == dict.fromkeys(STRICTER, (True, False))
    assert _ours_accepts(_variants(t, v1)["plain"], VECTOR_BODY)
