"""The Spine-Signature rule: the fact sheet's test vector and every way a header is refused."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from spine_pipeline.webhooks.signature import (
    FutureTimestamp,
    MalformedSignature,
    MissingSignature,
    NoMatchingSignature,
    SignatureError,
    StaleTimestamp,
    sign,
    signature_hex,
    verify,
)
from spine_pipeline_tests.webhooks.helpers import SECRET, VECTOR_BODY, VECTOR_T, VECTOR_V1

T = VECTOR_T
OK_HEADER = f"t={T},v1={VECTOR_V1}"


def test_the_fact_sheet_vector() -> None:
    assert signature_hex(SECRET, T, VECTOR_BODY) == VECTOR_V1
    assert sign(SECRET, T, VECTOR_BODY) == OK_HEADER
    assert verify(OK_HEADER, VECTOR_BODY, [SECRET], now=T) == T
    # Independently of our code: HMAC-SHA256 over "t." + body, keyed by the whole secret.
    by_hand = hmac.new(b"whsec_test_secret", b"1745251200." + VECTOR_BODY, hashlib.sha256)
    assert by_hand.hexdigest() == VECTOR_V1


def test_the_secret_is_used_whole_never_base64_decoded() -> None:
    # "whsec_" is part of the key; a base64-decoding implementation gets another digest.
    assert signature_hex("test_secret", T, VECTOR_BODY) != VECTOR_V1
    assert signature_hex("whsec_test_secret", T, VECTOR_BODY) == VECTOR_V1


def test_a_non_ascii_secret_is_utf8_encoded() -> None:
    secret = "whsec_grüße"
    expected = hmac.new(secret.encode("utf-8"), f"{T}.".encode() + b"{}", hashlib.sha256)
    assert signature_hex(secret, T, b"{}") == expected.hexdigest()
    assert verify(sign(secret, T, b"{}"), b"{}", [secret], now=T) == T


def _refused(header: str | None, *, body: bytes = VECTOR_BODY, secrets=(SECRET,), now=T):
    with pytest.raises(SignatureError) as caught:
        verify(header, body, list(secrets), now=now)
    err = caught.value
    # The reason is short and shows nothing of the header, the body or the secret.
    assert len(err.reason) < 80 and "\n" not in err.reason
    for secret_part in (SECRET, VECTOR_V1, str(T), "evt_"):
        assert secret_part not in err.reason and secret_part not in str(err)
    return err


@pytest.mark.parametrize("header", [None, ""])
def test_a_missing_header(header: str | None) -> None:
    assert isinstance(_refused(header), MissingSignature)


@pytest.mark.parametrize(
    "header",
    [
        "garbage",
        f"v1={VECTOR_V1}",  # no t
        f"t={T}",  # no v1
        f"t={T},v1=",  # an empty v1 is no v1
        f"t=,v1={VECTOR_V1}",
        f"t={T},t={T},v1={VECTOR_V1}",  # two t: one of them would be ignored
        f"t={T}.0,v1={VECTOR_V1}",  # not an integer
        f"t=abc,v1={VECTOR_V1}",
        f"t=-{T},v1={VECTOR_V1}",
        f"t=+{T},v1={VECTOR_V1}",  # int() would take it
        f"t={T:_},v1={VECTOR_V1}",  # int() would take 1_745_251_200
        "t=\u0661\u0667\u0664\u0665,v1=" + VECTOR_V1,  # Arabic-Indic digits: int() takes them
        f"T={T},V1={VECTOR_V1}",  # names are case-sensitive
        "t=1" + "0" * 40 + f",v1={VECTOR_V1}",
        f"t={T}," + ",".join(["v1=" + "0" * 64] * 80),  # over the header cap
    ],
)
def test_malformed_headers(header: str) -> None:
    assert isinstance(_refused(header), MalformedSignature)


def test_several_v1_one_valid_is_accepted() -> None:
    wrong = "0" * 64
    for header in (
        f"t={T},v1={wrong},v1={VECTOR_V1}",
        f"t={T},v1={VECTOR_V1},v1={wrong}",
        f"v1={wrong}, t={T} ,v0=legacy,v1={VECTOR_V1},v2=future",  # order, spaces, other schemes
    ):
        assert verify(header, VECTOR_BODY, [SECRET], now=T) == T


def test_several_v1_none_valid_is_refused() -> None:
    header = f"t={T},v1={'0' * 64},v1={signature_hex('whsec_other', T, VECTOR_BODY)}"
    assert isinstance(_refused(header), NoMatchingSignature)


def test_the_window_is_symmetric_and_inclusive() -> None:
    assert verify(OK_HEADER, VECTOR_BODY, [SECRET], now=T + 300) == T
    assert verify(OK_HEADER, VECTOR_BODY, [SECRET], now=T + 300.99) == T  # whole seconds
    assert verify(OK_HEADER, VECTOR_BODY, [SECRET], now=T - 300) == T
    assert isinstance(_refused(OK_HEADER, now=T + 301), StaleTimestamp)
    assert isinstance(_refused(OK_HEADER, now=T - 301), FutureTimestamp)
    assert isinstance(_refused(OK_HEADER, now=T + 10**9), StaleTimestamp)
    with pytest.raises(StaleTimestamp):
        verify(OK_HEADER, VECTOR_BODY, [SECRET], now=T + 61, tolerance=60)


def test_a_stale_timestamp_is_refused_before_the_signature_is_checked() -> None:
    # A correct signature does not rescue a replay.
    header = sign(SECRET, T - 1000, VECTOR_BODY)
    assert isinstance(_refused(header), StaleTimestamp)


def test_the_timestamp_is_part_of_what_is_signed() -> None:
    moved = f"t={T + 1},v1={VECTOR_V1}"
    assert isinstance(_refused(moved), NoMatchingSignature)


def test_a_wrong_secret_is_refused() -> None:
    assert isinstance(_refused(OK_HEADER, secrets=("whsec_wrong",)), NoMatchingSignature)
    assert isinstance(_refused(OK_HEADER, secrets=(SECRET + " ",)), NoMatchingSignature)


def test_rotated_secrets() -> None:
    old, new = "whsec_old_secret", "whsec_new_secret"
    for signer in (old, new):
        header = sign(signer, T, VECTOR_BODY)
        assert verify(header, VECTOR_BODY, [old, new], now=T) == T
        assert verify(header, VECTOR_BODY, [new, old], now=T) == T
    # After the rotation ends, the old secret's deliveries are refused.
    assert isinstance(_refused(sign(old, T, VECTOR_BODY), secrets=(new,)), NoMatchingSignature)
    # Dual signing during a rotation: one header, one v1 per secret.
    dual = f"t={T},v1={signature_hex(old, T, VECTOR_BODY)},v1={signature_hex(new, T, VECTOR_BODY)}"
    assert verify(dual, VECTOR_BODY, [new], now=T) == T


@pytest.mark.parametrize("position", [0, 1, len(VECTOR_BODY) // 2, len(VECTOR_BODY) - 1])
def test_a_body_changed_by_one_byte_is_refused(position: int) -> None:
    body = bytearray(VECTOR_BODY)
    body[position] ^= 0x01
    assert isinstance(_refused(OK_HEADER, body=bytes(body)), NoMatchingSignature)
    assert isinstance(_refused(OK_HEADER, body=VECTOR_BODY + b" "), NoMatchingSignature)
    assert isinstance(_refused(OK_HEADER, body=VECTOR_BODY[:-1]), NoMatchingSignature)


def test_re_serialised_json_does_not_verify() -> None:
    import json

    again = json.dumps(json.loads(VECTOR_BODY)).encode()
    assert again != VECTOR_BODY
    assert isinstance(_refused(OK_HEADER, body=again), NoMatchingSignature)


def test_hex_is_lower_case_and_compared_exactly() -> None:
    upper = f"t={T},v1={VECTOR_V1.upper()}"
    assert isinstance(_refused(upper), NoMatchingSignature)
    # Non-hex, non-ASCII candidates are simply not a match (never a crash).
    odd = f"t={T},v1=\u00e9\u00e9,v1=\udcff"
    assert isinstance(_refused(odd), NoMatchingSignature)


def test_verify_needs_real_secrets() -> None:
    for secrets in ([], [""], "whsec_test_secret", [None]):
        with pytest.raises(ValueError, match="secrets"):
            verify(OK_HEADER, VECTOR_BODY, secrets, now=T)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        sign("", T, VECTOR_BODY)
