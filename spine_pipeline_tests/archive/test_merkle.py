"""The RFC 6962 Merkle tree: published vectors first, then properties over every small tree.

The vectors are copied from transparency-dev/merkle (Apache-2.0), the Go library behind
Trillian and Sigstore's logs: `proof/verify_test.go` (the 8 leaves, their roots, inclusion
and consistency proofs) and `rfc6962/rfc6962_test.go` (leaf and node hashes). Matching them
means our trees are CT's trees, so any RFC 6962 tool can check our proofs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest

from spine_pipeline.archive.merkle import (
    EMPTY_ROOT,
    MerkleLog,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    root_from_hashes,
    verify_consistency,
    verify_inclusion,
)

# transparency-dev/merkle proof/verify_test.go: `leaves`.
LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]

# transparency-dev/merkle proof/verify_test.go: `roots`, the root of the first i + 1 leaves.
ROOTS = [
    bytes.fromhex(h)
    for h in (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]

# transparency-dev/merkle proof/verify_test.go: `inclusionProofs`, as (1-based leaf, tree
# size, proof); the Go test checks leaf `leaf - 1`.
INCLUSION_VECTORS: list[tuple[int, int, list[str]]] = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (3, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        2,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]

# transparency-dev/merkle proof/verify_test.go: `consistencyProofs`, as (size1, size2, proof).
CONSISTENCY_VECTORS: list[tuple[int, int, list[str]]] = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]

LEAF_HASHES = [leaf_hash(d) for d in LEAVES]
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def test_hashes_match_rfc6962_vectors() -> None:
    # transparency-dev/merkle rfc6962/rfc6962_test.go: TestRFC6962Hasher.
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert root([]) == EMPTY_ROOT
    assert leaf_hash(b"").hex() == (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )
    assert leaf_hash(b"L123456").hex() == (
        "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    )
    assert node_hash(b"N123", b"N456").hex() == (
        "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"
    )
    # The empty tree is not the tree of one empty leaf, and order matters.
    assert leaf_hash(b"") != EMPTY_ROOT
    a, b = leaf_hash(b"Hello"), leaf_hash(b"World")
    assert node_hash(a, b) != node_hash(b, a)
    assert node_hash(a, b) != leaf_hash(a + b)


@pytest.mark.parametrize("size", range(1, 9))
def test_roots_match_published_vectors(size: int) -> None:
    assert root(LEAVES[:size]) == ROOTS[size - 1]
    assert root_from_hashes(LEAF_HASHES[:size]) == ROOTS[size - 1]
    log = MerkleLog.from_leaves(LEAVES)
    assert log.root(size) == ROOTS[size - 1]


@pytest.mark.parametrize(("leaf", "size", "proof_hex"), INCLUSION_VECTORS)
def test_inclusion_proofs_match_published_vectors(
    leaf: int, size: int, proof_hex: list[str]
) -> None:
    want = [bytes.fromhex(h) for h in proof_hex]
    assert inclusion_proof(LEAF_HASHES[:size], leaf - 1) == want
    assert verify_inclusion(LEAF_HASHES[leaf - 1], leaf - 1, size, want, ROOTS[size - 1])


@pytest.mark.parametrize(("size1", "size2", "proof_hex"), CONSISTENCY_VECTORS)
def test_consistency_proofs_match_published_vectors(
    size1: int, size2: int, proof_hex: list[str]
) -> None:
    want = [bytes.fromhex(h) for h in proof_hex]
    assert consistency_proof(LEAF_HASHES[:size2], size1) == want
    assert verify_consistency(size1, size2, ROOTS[size1 - 1], ROOTS[size2 - 1], want)


def _inclusion_probes(
    index: int, size: int, proof: list[bytes], root_: bytes, leaf: bytes
) -> list[tuple[str, int, int, list[bytes], bytes, bytes]]:
    """The corruptions transparency-dev's `corruptInclusionProof` tries, plus bit flips.

    Not "size + 1": a proof alone does not pin the tree size (leaf 0 of 3 and leaf 0 of 4 take
    proofs of the same shape), which is why a checkpoint signs the size and root together.
    """
    probes = [
        ("index - 1", index - 1, size, proof, root_, leaf),
        ("index + 1", index + 1, size, proof, root_, leaf),
        ("index ^ 2", index ^ 2, size, proof, root_, leaf),
        ("size * 2", index, size * 2, proof, root_, leaf),
        ("size // 2", index, size // 2, proof, root_, leaf),
        ("wrong leaf", index, size, proof, root_, leaf_hash(b"WrongLeaf")),
        ("short leaf", index, size, proof, root_, b"WrongLeaf"),
        ("empty root", index, size, proof, EMPTY_ROOT, leaf),
        ("random root", index, size, proof, SOME_HASH, leaf),
        ("trailing garbage", index, size, [*proof, b""], root_, leaf),
        ("trailing root", index, size, [*proof, root_], root_, leaf),
        ("preceding garbage", index, size, [b"", *proof], root_, leaf),
        ("preceding root", index, size, [root_, *proof], root_, leaf),
    ]
    for i in range(len(proof)):
        for bit in (0, 3, 255):
            flipped = list(proof)
            element = bytearray(flipped[i])
            element[bit // 8] ^= 1 << (bit % 8)
            flipped[i] = bytes(element)
            probes.append((f"proof[{i}] bit {bit}", index, size, flipped, root_, leaf))
    if proof:
        probes.append(("removed component", index, size, proof[:-1], root_, leaf))
    if len(proof) > 1:
        probes.append(
            ("inserted component", index, size, [proof[0], SOME_HASH, *proof[1:]], root_, leaf)
        )
        probes.append(("swapped components", index, size, proof[::-1], root_, leaf))
    # A probe that happens to describe the same true statement is not a corruption.
    return [
        p
        for p in probes
        if not (p[1] == index and p[2] == size and p[3] == proof and p[4:] == (root_, leaf))
    ]


def _leaf_hashes(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def test_every_inclusion_proof_up_to_64_leaves_verifies_and_corruptions_fail() -> None:
    for n in range(1, 65):
        hashes = _leaf_hashes(n)
        log = MerkleLog(hashes)
        root_ = log.root()
        for index in range(n):
            proof = log.inclusion_proof(index)
            assert verify_inclusion(hashes[index], index, n, proof, root_), (n, index)
            assert len(proof) <= (n - 1).bit_length()
            for desc, i, s, p, r, leaf in _inclusion_probes(index, n, proof, root_, hashes[index]):
                assert not verify_inclusion(leaf, i, s, p, r), (n, index, desc)


def _consistency_probes(
    size1: int, size2: int, proof: list[bytes], root1: bytes, root2: bytes
) -> list[tuple[str, int, int, bytes, bytes, list[bytes]]]:
    """The corruptions transparency-dev's `corruptConsistencyProof` tries, plus bit flips.

    Not "size2 + 1", for the reason given in `_inclusion_probes`.
    """
    probes = [
        ("size1 - 1", size1 - 1, size2, root1, root2, proof),
        ("size1 + 1", size1 + 1, size2, root1, root2, proof),
        ("size1 ^ 2", size1 ^ 2, size2, root1, root2, proof),
        ("size2 * 2", size1, size2 * 2, root1, root2, proof),
        ("size2 // 2", size1, size2 // 2, root1, root2, proof),
        ("wrong root1", size1, size2, SOME_HASH, root2, proof),
        ("wrong root2", size1, size2, root1, SOME_HASH, proof),
        ("short root", size1, size2, b"WrongRoot", root2, proof),
        ("swapped roots", size1, size2, root2, root1, proof),
        ("empty proof", size1, size2, root1, root2, []),
        ("trailing garbage", size1, size2, root1, root2, [*proof, b""]),
        ("trailing root1", size1, size2, root1, root2, [*proof, root1]),
        ("trailing root2", size1, size2, root1, root2, [*proof, root2]),
        ("preceding garbage", size1, size2, root1, root2, [b"", *proof]),
        ("preceding root1", size1, size2, root1, root2, [root1, *proof]),
        ("preceding root2", size1, size2, root1, root2, [root2, *proof]),
        ("preceding proof[0]", size1, size2, root1, root2, [proof[0], *proof]),
        ("truncated proof", size1, size2, root1, root2, proof[:-1]),
    ]
    for i in range(len(proof)):
        for bit in (0, 4, 255):
            flipped = list(proof)
            element = bytearray(flipped[i])
            element[bit // 8] ^= 1 << (bit % 8)
            flipped[i] = bytes(element)
            probes.append((f"proof[{i}] bit {bit}", size1, size2, root1, root2, flipped))
    return [p for p in probes if not (p[1:5] == (size1, size2, root1, root2) and p[5] == proof)]


def test_every_consistency_proof_up_to_64_leaves_verifies_and_corruptions_fail() -> None:
    for n in range(1, 65):
        log = MerkleLog(_leaf_hashes(n))
        root2 = log.root()
        for m in range(0, n + 1):
            proof = log.consistency_proof(m)
            root1 = log.root(m)
            assert verify_consistency(m, n, root1, root2, proof), (m, n)
            if m in (0, n):
                assert proof == []
                continue
            for desc, s1, s2, r1, r2, p in _consistency_probes(m, n, proof, root1, root2):
                assert not verify_consistency(s1, s2, r1, r2, p), (m, n, desc)


def test_historical_proofs_from_a_grown_log_match_a_log_of_that_size() -> None:
    """A proof for an earlier size (two checkpoints apart) is the proof a smaller log gives."""
    hashes = _leaf_hashes(40)
    big = MerkleLog(hashes)
    for n in range(1, 41):
        small = MerkleLog(hashes[:n])
        assert big.root(n) == small.root()
        for i in range(n):
            assert big.inclusion_proof(i, n) == small.inclusion_proof(i)
        for m in range(n + 1):
            assert big.consistency_proof(m, n) == small.consistency_proof(m)


def test_appending_one_at_a_time_matches_building_at_once() -> None:
    hashes = _leaf_hashes(100)
    log = MerkleLog()
    for i, h in enumerate(hashes):
        assert log.append_hash(h) == i
        assert log.root() == root_from_hashes(hashes[: i + 1])
    assert len(log) == log.size == 100
    assert log.leaf_hash(37) == hashes[37]


def test_edge_cases_follow_rfc9162_and_refuse_lies_about_the_empty_tree() -> None:
    r1 = ROOTS[0]
    # Equal sizes: an empty proof and equal roots only.
    assert verify_consistency(3, 3, ROOTS[2], ROOTS[2], [])
    assert not verify_consistency(3, 3, ROOTS[2], ROOTS[3], [])
    assert not verify_consistency(3, 3, ROOTS[2], ROOTS[2], [EMPTY_ROOT])
    # Size 0: the empty tree's root is known, so nothing else passes for it.
    assert verify_consistency(0, 1, EMPTY_ROOT, r1, [])
    assert not verify_consistency(0, 1, SOME_HASH, r1, [])
    assert not verify_consistency(0, 1, EMPTY_ROOT, r1, [EMPTY_ROOT])
    # Time travel to the past.
    assert not verify_consistency(2, 1, ROOTS[1], r1, [])
    # Inclusion in an empty tree or beyond the end.
    for index, size in ((0, 0), (0, -1), (1, 1), (2, 1), (-1, 1)):
        assert not verify_inclusion(r1, index, size, [], r1)
    # A one-leaf tree: the root is the leaf hash and the proof is empty.
    assert verify_inclusion(r1, 0, 1, [], r1)
    assert not verify_inclusion(b"", 0, 1, [], b"")


@pytest.mark.parametrize(
    "call",
    [
        lambda: inclusion_proof(LEAF_HASHES, 8),
        lambda: inclusion_proof(LEAF_HASHES, -1),
        lambda: inclusion_proof([], 0),
        lambda: consistency_proof(LEAF_HASHES, 9),
        lambda: consistency_proof(LEAF_HASHES, -1),
        lambda: MerkleLog(LEAF_HASHES).root(9),
        lambda: MerkleLog([b"short"]),
        lambda: MerkleLog().append_hash(hashlib.sha1(b"").digest()),
    ],
)
def test_generators_refuse_impossible_requests(call: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        call()


def _mth(d: list[bytes]) -> bytes:
    """RFC 6962 §2.1 MTH, literally recursive: the oracle for the iterative code."""
    if not d:
        return EMPTY_ROOT
    if len(d) == 1:
        return d[0]
    k = 1 << ((len(d) - 1).bit_length() - 1)
    return node_hash(_mth(d[:k]), _mth(d[k:]))


def _path(m: int, d: list[bytes]) -> list[bytes]:
    """RFC 6962 §2.1.1 PATH(m, D[n]), literally."""
    if len(d) == 1:
        return []
    k = 1 << ((len(d) - 1).bit_length() - 1)
    if m < k:
        return [*_path(m, d[:k]), _mth(d[k:])]
    return [*_path(m - k, d[k:]), _mth(d[:k])]


def _subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    """RFC 6962 §2.1.2 SUBPROOF(m, D[n], b), literally."""
    if m == len(d):
        return [] if b else [_mth(d)]
    k = 1 << ((len(d) - 1).bit_length() - 1)
    if m <= k:
        return [*_subproof(m, d[:k], b), _mth(d[k:])]
    return [*_subproof(m - k, d[k:], False), _mth(d[:k])]


def test_iterative_proofs_equal_the_rfc_definitions_up_to_64_leaves() -> None:
    for n in range(1, 65):
        hashes = _leaf_hashes(n)
        log = MerkleLog(hashes)
        assert log.root() == _mth(hashes)
        for m in range(n):
            assert log.inclusion_proof(m) == _path(m, hashes), (m, n)
        for m in range(1, n):
            assert log.consistency_proof(m) == _subproof(m, hashes, True), (m, n)


def test_a_large_log_answers_proofs_without_rebuilding() -> None:
    """2**17 + 3 leaves: appends stay linear and proofs touch O(log² n) stored nodes."""
    n = (1 << 17) + 3
    log = MerkleLog.from_leaves(i.to_bytes(4, "big") for i in range(n))
    root_ = log.root()
    # Left of 2**17: 17 levels and the right subtree (3 leaves); in those 3: 2 or 1, plus the left.
    for index, length in ((0, 18), (1, 18), (n // 2, 18), (n - 2, 3), (n - 1, 2)):
        proof = log.inclusion_proof(index)
        assert len(proof) == length
        assert verify_inclusion(log.leaf_hash(index), index, n, proof, root_)
    for old in (1, 1 << 16, (1 << 17) + 1, n - 1):
        assert verify_consistency(old, n, log.root(old), root_, log.consistency_proof(old))
