"""RFC 6962 / RFC 9162 Merkle trees: leaf and node hashes, roots, inclusion and consistency proofs.

Why a Merkle log: the manifest hash chain already proves that a reader holds *some* unbroken
history, but checking one manifest against it means walking the whole chain, and two readers
cannot cheaply tell whether the history one saw yesterday is a prefix of what another sees
today. A Merkle tree over the manifests gives both in O(log n): an inclusion proof shows that
a manifest is leaf `i` of the tree of size `n` with a given root, and a consistency proof shows
that the tree of size `m` is a prefix of the tree of size `n` (nothing rewritten, only
appended). Signed checkpoints (`archive.checkpoint`) publish those roots; witnesses
co-sign them. We follow Certificate Transparency exactly (RFC 6962 §2.1, verification as in
RFC 9162 §2.1.3.2 and §2.1.4.2) so that existing tooling and published test vectors apply,
rather than inventing a tree shape of our own.

Domain separation (RFC 6962 §2.1): a leaf hash is `sha256(0x00 || data)` and an interior node
`sha256(0x01 || left || right)`, so a leaf can never be passed off as a node (the second
preimage attack on plain Merkle trees). The tree over `n` leaves splits at the largest power
of two smaller than `n`; the empty tree's root is `sha256(b"")`.

Everything here is pure (no I/O) and iterative. `MerkleLog` keeps the hashes of every
complete (perfect, aligned) subtree in one flat `bytearray` per level, so an append costs O(1)
hashes amortised, any root costs O(log n) and any proof O(log² n) at worst, for the log as it
is now or as it was at any earlier size. The module-level functions take a list of leaf hashes
and build a `MerkleLog` over it (O(n)) for one-off use.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

HASH_SIZE = 32
"""Every hash here is a SHA-256 digest; proofs and roots of any other length are refused."""

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}) = SHA-256() (RFC 6962 §2.1): the root of the tree with no leaves."""


def leaf_hash(data: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d): the hash of one leaf (RFC 6962 §2.1)."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the hash of an interior node (RFC 6962 §2.1)."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    """The `k` of RFC 6962 §2.1: the largest power of two strictly smaller than `n` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes | bytearray) and len(value) == HASH_SIZE


class MerkleLog:
    """An append-only list of leaf hashes with the roots and proofs of RFC 6962 over it.

    The writer appends one manifest at a time; every root and proof can be asked for the log
    as it is now (`size=None`) or as it was at any earlier size, which is what a consistency
    proof between two checkpoints needs. Storage is one `bytearray` per level holding the
    hashes of the complete aligned subtrees of that height (level 0: the leaf hashes), about
    2 x 32 bytes per leaf and no per-hash Python object.
    """

    __slots__ = ("_levels", "_size")

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0
        for h in leaf_hashes:
            self.append_hash(h)

    @classmethod
    def from_leaves(cls, leaves: Iterable[bytes]) -> MerkleLog:
        """A log over raw leaf data (each hashed with `leaf_hash`)."""
        log = cls()
        for data in leaves:
            log.append(data)
        return log

    def __len__(self) -> int:
        return self._size

    @property
    def size(self) -> int:
        """The number of leaves appended so far."""
        return self._size

    def append(self, data: bytes) -> int:
        """Append one leaf by its data; return its index."""
        return self.append_hash(leaf_hash(data))

    def append_hash(self, h: bytes) -> int:
        """Append one leaf by its (already computed) leaf hash; return its index.

        Completes every perfect subtree the new leaf closes: an odd index at level `k` means
        its left sibling is already there, so the pair's parent joins level `k + 1`.
        """
        if not _is_hash(h):
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, got {len(h)!r}")
        index = self._size
        self._levels[0] += h
        i, level = index, 0
        while i & 1:
            row = self._levels[level]
            parent = node_hash(
                bytes(row[(i - 1) * HASH_SIZE : i * HASH_SIZE]),
                bytes(row[i * HASH_SIZE : (i + 1) * HASH_SIZE]),
            )
            level += 1
            if level == len(self._levels):
                self._levels.append(bytearray())
            self._levels[level] += parent
            i >>= 1
        self._size = index + 1
        return index

    def leaf_hash(self, index: int) -> bytes:
        """The leaf hash stored at `index`."""
        if not 0 <= index < self._size:
            raise IndexError(f"leaf {index} is outside a log of size {self._size}")
        return self._node(0, index)

    def _node(self, level: int, index: int) -> bytes:
        row = self._levels[level]
        return bytes(row[index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def _range_hash(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]) for a node of some tree over this log (RFC 6962 §2.1).

        Every subtree that PATH and PROOF ask for starts at a multiple of the largest power
        of two not above its size, so it splits greedily into complete aligned subtrees
        (already stored), folded right to left exactly as MTH's recursion would.
        """
        if lo == hi:
            return EMPTY_ROOT
        pieces: list[bytes] = []
        while lo < hi:
            width = 1 << ((hi - lo).bit_length() - 1)
            if lo % width:
                raise AssertionError(f"range [{lo}, {hi}) is not a node of an RFC 6962 tree")
            pieces.append(self._node(width.bit_length() - 1, lo // width))
            lo += width
        acc = pieces[-1]
        for piece in reversed(pieces[:-1]):
            acc = node_hash(piece, acc)
        return acc

    def _check_size(self, size: int | None) -> int:
        if size is None:
            return self._size
        if not 0 <= size <= self._size:
            raise ValueError(f"tree size {size} is outside 0..{self._size}")
        return size

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first `size` leaves (default: all of them)."""
        return self._range_hash(0, self._check_size(size))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[size]) (RFC 6962 §2.1.1, RFC 9162 §2.1.3.1), deepest sibling first.

        Walks down from the root: at each split the sibling of the half holding `index` joins
        the proof; the list is reversed at the end because verification goes bottom-up.
        """
        n = self._check_size(size)
        if not 0 <= index < n:
            raise ValueError(f"leaf {index} is outside a tree of size {n}")
        proof: list[bytes] = []
        lo, hi = 0, n
        while hi - lo > 1:
            k = _largest_power_of_two_below(hi - lo)
            if index < lo + k:
                proof.append(self._range_hash(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._range_hash(lo, lo + k))
                lo += k
        proof.reverse()
        return proof

    def consistency_proof(self, old_size: int, size: int | None = None) -> list[bytes]:
        """PROOF(old_size, D[size]) (RFC 6962 §2.1.2, RFC 9162 §2.1.4.1).

        SUBPROOF's recursion unrolled: `complete` is its boolean `b`, true while the old tree
        is still a left-aligned complete subtree of the current range (then its hash is known
        to the verifier and is not repeated). An old size of 0 or of the whole tree needs no
        proof.
        """
        n = self._check_size(size)
        if not 0 <= old_size <= n:
            raise ValueError(f"old size {old_size} is outside 0..{n}")
        if old_size in (0, n):
            return []
        proof: list[bytes] = []
        lo, hi, complete = 0, n, True
        while True:
            if old_size == hi:
                if not complete:
                    proof.append(self._range_hash(lo, hi))
                break
            k = _largest_power_of_two_below(hi - lo)
            if old_size <= lo + k:
                proof.append(self._range_hash(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._range_hash(lo, lo + k))
                lo += k
                complete = False
        proof.reverse()
        return proof


def root(leaves: Iterable[bytes]) -> bytes:
    """MTH(D[n]) over raw leaf data (RFC 6962 §2.1); `sha256(b"")` for no leaves."""
    return MerkleLog.from_leaves(leaves).root()


def root_from_hashes(leaf_hashes: Iterable[bytes]) -> bytes:
    """MTH(D[n]) when the leaf hashes are already known (as the manifests' will be)."""
    return MerkleLog(leaf_hashes).root()


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]) over the given leaf hashes; see `MerkleLog.inclusion_proof`."""
    return MerkleLog(leaf_hashes).inclusion_proof(index)


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """PROOF(old_size, D[n]) over the given leaf hashes; see `MerkleLog.consistency_proof`."""
    return MerkleLog(leaf_hashes).consistency_proof(old_size)


def _shift_while_lsb_clear(fn: int, sn: int) -> tuple[int, int]:
    """Right-shift both until fn's lowest bit is set or fn is 0 (RFC 9162 §2.1.3.2, §2.1.4.2)."""
    while fn and not fn & 1:
        fn >>= 1
        sn >>= 1
    return fn, sn


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Whether `proof` shows leaf `index` of the tree of `size` leaves, with `root`, is `leaf_hash`.

    RFC 9162 §2.1.3.2 step by step. `fn`/`sn` track the positions of the current node and of
    the tree's last node at the current level; a node that is a right child, or the last one
    on its level (so the right edge promotes it), takes the proof element on its left. The
    proof must be used up exactly when `sn` reaches 0, so a truncated, padded or reordered
    proof fails. Never raises: any malformed input (wrong sizes, non-32-byte hashes) is False.
    """
    if not (_is_hash(leaf_hash) and _is_hash(root)):
        return False
    if not 0 <= index < size:
        return False
    if any(not _is_hash(p) for p in proof):
        return False
    fn, sn = index, size - 1
    r = bytes(leaf_hash)
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                fn, sn = _shift_while_lsb_clear(fn, sn)
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Whether `proof` shows tree (`old_size`, `old_root`) is a prefix of (`new_size`, `new_root`).

    RFC 9162 §2.1.4.2 step by step: the proof is folded into both the old root (`fr`) and the
    new one (`sr`) at once; the old tree's nodes are those where `fn` is a right child or the
    right edge. Edge cases, stricter than RFC 9162 leaves them: equal sizes need an empty
    proof and equal roots; an old size of 0 needs an empty proof and `old_root` equal to the
    empty tree's root (`EMPTY_ROOT`), since that root is known and anything else is a lie.
    Never raises: any malformed input is False.
    """
    if not (_is_hash(old_root) and _is_hash(new_root)):
        return False
    if any(not _is_hash(p) for p in proof):
        return False
    if not 0 <= old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof and old_root == EMPTY_ROOT
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        # The old tree is a complete left subtree: its root is the path's first node.
        path.insert(0, bytes(old_root))
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = bytes(path[0])
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                fn, sn = _shift_while_lsb_clear(fn, sn)
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
