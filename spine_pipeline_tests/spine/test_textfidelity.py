"""The text-fidelity rules: one U+FFFD per invalid byte, original bytes recoverable."""

import pytest

from spine_pipeline.spine.textfidelity import (
    encode_original,
    lossy_decode,
    normalise,
    original_if_changed,
    original_text,
    replace_surrogates,
    utf8_replacing_surrogates,
)

# Truncated 3-byte sequence, invalid lead bytes, an encoded surrogate, a truncated 4-byte one.
RAW = b"a\xe2\x82b \xff\xfe \xed\xa0\x80 \xf0\x9f\x98 ok"


def test_one_replacement_per_invalid_byte_so_offsets_match():
    text, valid = lossy_decode(RAW)
    assert not valid
    assert text.count("\ufffd") == 10  # errors="replace" would give fewer
    assert len(text) == len(original_text(RAW))
    assert lossy_decode("café".encode()) == ("café", True)


def test_original_text_round_trips_to_the_exact_bytes():
    original = original_text(RAW)
    assert encode_original(original) == RAW
    text = lossy_decode(RAW)[0]
    assert original_if_changed(original[1:4], text[1:4]) == b"\xe2\x82b"
    assert original_if_changed(original[-2:], text[-2:]) is None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("plain", ("plain", None)),
        ("café", ("café", None)),
        (RAW, (lossy_decode(RAW)[0], RAW)),
        (original_text(RAW), (lossy_decode(RAW)[0], RAW)),  # a surrogateescape str
        ("x\ud800", ("x\ufffd\ufffd\ufffd", b"x\xed\xa0\x80")),  # a lone surrogate str
    ],
)
def test_normalise(data, expected):
    assert normalise(data) == expected


def test_lone_surrogates_become_replacement_characters():
    assert replace_surrogates("a\ud800b\udfff") == "a\ufffdb\ufffd"
    assert utf8_replacing_surrogates("é\ud800") == "é\ufffd".encode()
    assert utf8_replacing_surrogates("é") == "é".encode()
