"""Replicated tables: swarm-wide state every node holds a full copy of.

Theory of operation
-------------------
A :class:`Table` maps string keys to :class:`Entry` values and merges any
copy of an entry it is handed by a pure, commutative, idempotent rule, so
copies that have seen the same entries are equal whatever the order
(a state-based CRDT).  Two kinds (:class:`TableSpec.kind`):

* ``"lww"`` -- last writer wins per key by :class:`~swarmd.core.hlc.Stamp`;
  a deletion is a tombstone (value ``None``).  With ``final_tombstones`` a
  tombstone beats any stamp, so a revoked API key can never come back, even
  from a node whose clock runs ahead.
* ``"max"`` -- the value is a short list of non-negative integers merged
  element by element with ``max``: one G-counter slot per key.  Each node
  writes only keys it owns (its node id is in the key), so the sum over
  slots is a counter any node can read.

Spread (:class:`Replicas`, driven by :class:`swarmd.core.node.NodeMachine`):

* every local write is broadcast at once as a *delta* (a membership user
  message whose key names the entry, so a newer write of the same entry
  replaces an older one still queued);
* *anti-entropy* repairs what gossip lost or a node missed while it was off:
  each node's record carries a 64-bit digest per table (:meth:`Table.digest`,
  an XOR of per-entry hashes, updated in O(1) per write).  Every
  ``sync_interval`` the machine picks, per table, one alive peer whose
  gossiped digest differs and sends it the table's 32 bucket hashes (a
  direct, non-relayed user message); the peer answers with its entries in
  the buckets that differ and asks for ours in the same buckets.  Three
  messages and only the differing buckets, whatever the table's size.

Untrusted input: a malformed message is dropped and counted
(``stats["bad_messages"]``), a malformed entry, one over the spec's bounds or
one the spec's ``validate`` refuses is dropped and counted
(``stats["bad_entries"]``), and an entry stamped too far in the future is
refused (``stats["future_entries"]``).  Nothing here raises on peer input.

Wire (protocol/tables.md): msgpack maps ``{"o": op, "t": table, ...}`` with
entries as ``[key, [ms, counter, node], value]``.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import msgpack

from swarmd.core.hlc import Hlc, Stamp

__all__ = ["BUCKETS", "Broadcast", "Changed", "Direct", "Entry", "Replicas", "Table",
           "TableSpec", "TABLE_USER_KEY"]

#: Buckets a table is split into for anti-entropy.
BUCKETS = 32
#: Membership user-message key of direct sync messages; deltas use ``tbl:<table>:<key>``.
TABLE_USER_KEY = "tbl"
#: Largest payload (bytes) put in one message; membership frames allow 60 KB.
CHUNK_BYTES = 40_000
#: Most entries accepted from one message.
MAX_ENTRIES_PER_MESSAGE = 4_000
MAX_KEY_LEN = 256
MAX_SLOTS = 8
#: Seconds between retention sweeps.
PRUNE_EVERY = 60.0
_U63 = 1 << 63


@dataclass(frozen=True)
class Entry:
    key: str
    stamp: Stamp
    #: A mapping (lww), a tuple of ints (max), or None (a tombstone, lww only).
    value: Any

    @property
    def dead(self) -> bool:
        return self.value is None

    def encode(self) -> list[Any]:
        v = self.value
        if isinstance(v, tuple):
            v = list(v)
        elif isinstance(v, Mapping):
            v = dict(v)
        return [self.key, self.stamp.encode(), v]


@dataclass(frozen=True)
class TableSpec:
    name: str
    kind: Literal["lww", "max"] = "lww"
    #: lww only: a tombstone beats any live entry, whatever the stamps.
    final_tombstones: bool = False
    #: Entries beyond this are refused (bounds memory against a hostile peer).
    max_entries: int = 100_000
    #: Largest msgpack-encoded value accepted (bytes).
    max_value_bytes: int = 8_192
    #: Extra check of a live value (lww: a Mapping, max: a tuple of ints).
    validate: Callable[[str, Any], bool] | None = None
    #: ``retain(key, wall_seconds)``: False once every node drops the entry
    #: (expired counters).  Applied on arrival and every :data:`PRUNE_EVERY` s.
    retain: Callable[[str, float], bool] | None = None
    #: lww only: what "later" means, if not the stamp alone -- e.g.
    #: ``(epoch, stamp)`` for placements, so an entry from a stale
    #: coordinator loses whatever its clock says.  Must be a total order.
    rank: Callable[[Entry], Any] | None = None


def _entry_hash(e: Entry, kind: str) -> int:
    # max: the value alone (equal counters must hash equal whatever stamps
    # the copies carry); lww: key and stamp decide the value.
    body = [e.key, list(e.value)] if kind == "max" else [e.key, e.stamp.encode(), e.dead]
    return int.from_bytes(hashlib.blake2b(msgpack.packb(body), digest_size=8).digest(), "big")


def bucket_of(key: str) -> int:
    return zlib.crc32(key.encode()) % BUCKETS


class Table:
    """One replicated table (see the module docstring)."""

    def __init__(self, spec: TableSpec) -> None:
        self.spec = spec
        self._entries: dict[str, Entry] = {}
        self._hash: dict[str, int] = {}
        self._buckets = [0] * BUCKETS

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Entry | None:
        return self._entries.get(key)

    def live(self) -> Iterator[Entry]:
        return (e for e in self._entries.values() if not e.dead)

    def entries(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def digest(self) -> str:
        d = 0
        for i, h in enumerate(self._buckets):
            d ^= (h * (2 * i + 1)) & (_U63 * 2 - 1)
        return f"{d:016x}"

    def bucket_hashes(self) -> list[int]:
        return list(self._buckets)

    def in_buckets(self, buckets: Iterable[int]) -> list[Entry]:
        want = set(buckets)
        return [e for e in self._entries.values() if bucket_of(e.key) in want]

    def merge(self, e: Entry) -> Entry | None:
        """Merge one entry; returns the stored entry if it changed, else None."""
        old = self._entries.get(e.key)
        new = self._resolve(old, e)
        if new is None or new == old:
            return None
        if old is None and len(self._entries) >= self.spec.max_entries:
            return None
        self._put(new)
        return new

    def drop(self, key: str) -> None:
        """Forget an entry entirely (garbage collection by a rule every node applies)."""
        if key in self._entries:
            b = bucket_of(key)
            self._buckets[b] ^= self._hash.pop(key)
            del self._entries[key]

    def _put(self, e: Entry) -> None:
        b = bucket_of(e.key)
        if e.key in self._hash:
            self._buckets[b] ^= self._hash[e.key]
        h = _entry_hash(e, self.spec.kind)
        self._hash[e.key] = h
        self._buckets[b] ^= h
        self._entries[e.key] = e

    def _resolve(self, old: Entry | None, e: Entry) -> Entry | None:
        if old is None:
            return e
        if self.spec.kind == "max":
            n = max(len(old.value), len(e.value))
            a = list(old.value) + [0] * (n - len(old.value))
            b = list(e.value) + [0] * (n - len(e.value))
            return Entry(e.key, max(old.stamp, e.stamp), tuple(max(x, y) for x, y in zip(a, b,
                                                                                        strict=True)))
        if self.spec.final_tombstones and old.dead != e.dead:
            return old if old.dead else e
        rank = self.spec.rank
        if rank is not None:
            return e if rank(e) > rank(old) else old
        return e if e.stamp > old.stamp else old

    # -- codec ------------------------------------------------------------

    def decode_entry(self, raw: Any) -> Entry | None:
        """An entry from its wire form, or None if malformed or out of bounds."""
        if not isinstance(raw, list) or len(raw) != 3:
            return None
        key, stamp_raw, value = raw
        if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LEN:
            return None
        stamp = Stamp.decode(stamp_raw)
        if stamp is None:
            return None
        spec = self.spec
        if spec.kind == "max":
            if (not isinstance(value, list) or not 0 < len(value) <= MAX_SLOTS
                    or any(type(x) is not int or not 0 <= x < _U63 for x in value)):
                return None
            value = tuple(value)
        elif value is not None:
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                return None
            if len(msgpack.packb(value)) > spec.max_value_bytes:
                return None
        if value is not None and spec.validate is not None and not spec.validate(key, value):
            return None
        return Entry(key, stamp, value)


# -- actions ------------------------------------------------------------------


@dataclass(frozen=True)
class Broadcast:
    """Gossip ``payload`` to every node under membership user key ``key``."""

    key: str
    payload: bytes


@dataclass(frozen=True)
class Direct:
    """Send ``payload`` to node ``to`` only (user key :data:`TABLE_USER_KEY`)."""

    to: str
    payload: bytes


@dataclass(frozen=True)
class Changed:
    """Entries of ``table`` changed here (persist them; refresh views)."""

    table: str
    entries: tuple[Entry, ...]
    local: bool


ReplicaAction = Broadcast | Direct | Changed


@dataclass
class Replicas:
    """Every replicated table of one node, with their spread (see module docstring)."""

    node_id: str
    specs: Iterable[TableSpec]
    hlc: Hlc
    #: Seconds between anti-entropy rounds (per table, one peer each round).
    sync_interval: float = 3.0
    tables: dict[str, Table] = field(init=False)
    stats: dict[str, int] = field(init=False)
    _out: list[ReplicaAction] = field(init=False)
    _next_sync: float = field(init=False, default=0.0)
    _next_prune: float = field(init=False, default=0.0)
    _seq: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.tables = {s.name: Table(s) for s in self.specs}
        self.stats = {"writes": 0, "merged": 0, "bad_messages": 0, "bad_entries": 0,
                      "future_entries": 0, "syncs_sent": 0, "sync_entries_sent": 0,
                      "expired_entries": 0}
        self._out = []

    # -- inputs -----------------------------------------------------------

    def write(self, table: str, key: str, value: Any, wall_ms: int) -> Entry:
        """Write (or, with ``value=None``, delete) an entry here and spread it."""
        t = self.tables[table]
        if isinstance(value, list):
            value = tuple(value)
        e = Entry(key, self.hlc.now(wall_ms), value)
        stored = t.merge(e)
        self.stats["writes"] += 1
        if stored is not None:
            self._out.append(Changed(table, (stored,), True))
            self._out.append(Broadcast(f"{TABLE_USER_KEY}:{table}:{key}",
                                       _pack({"o": "d", "t": table, "e": [stored.encode()]})))
        return stored or t.get(key) or e

    def write_many(self, table: str, items: Iterable[tuple[str, Any]], wall_ms: int) -> None:
        """Write several entries as one delta (counter slots flushed together)."""
        t = self.tables[table]
        stored: list[Entry] = []
        for key, value in items:
            if isinstance(value, list):
                value = tuple(value)
            e = t.merge(Entry(key, self.hlc.now(wall_ms), value))
            self.stats["writes"] += 1
            if e is not None:
                stored.append(e)
        if not stored:
            return
        self._out.append(Changed(table, tuple(stored), True))
        self._seq += 1
        for i in range(0, len(stored), 200):
            part = [e.encode() for e in stored[i:i + 200]]
            self._out.append(Broadcast(f"{TABLE_USER_KEY}:{table}:{self.node_id}:{self._seq}:{i}",
                                       _pack({"o": "d", "t": table, "e": part})))

    def load(self, table: str, raw_entries: Iterable[Any], wall_ms: int) -> int:
        """Merge entries read from this node's own disk (not spread; sync does that)."""
        return len(self._merge(table, raw_entries, wall_ms, local=True))

    def receive(self, sender: str, payload: bytes, wall_ms: int) -> None:
        """A table message from ``sender`` (a delta or a sync step)."""
        try:
            msg = msgpack.unpackb(payload, raw=False, strict_map_key=True)
        except Exception:  # noqa: BLE001 -- any malformed msgpack is dropped
            self.stats["bad_messages"] += 1
            return
        if not isinstance(msg, dict) or msg.get("t") not in self.tables:
            self.stats["bad_messages"] += 1
            return
        op, name = msg.get("o"), msg["t"]
        t = self.tables[name]
        entries = msg.get("e", [])
        if not isinstance(entries, list) or len(entries) > MAX_ENTRIES_PER_MESSAGE:
            self.stats["bad_messages"] += 1
            return
        if op in ("d", "r", "p"):
            self._merge(name, entries, wall_ms, local=False)
        if op == "q":
            theirs = msg.get("b")
            if not isinstance(theirs, bytes) or len(theirs) != 8 * BUCKETS:
                self.stats["bad_messages"] += 1
                return
            mine = t.bucket_hashes()
            diff = [i for i in range(BUCKETS)
                    if int.from_bytes(theirs[8 * i:8 * i + 8], "big") != mine[i]]
            if diff:
                self._send_entries(sender, name, t.in_buckets(diff), "r", want=diff)
        elif op == "r":
            want = msg.get("w")
            if isinstance(want, list) and want and all(
                    type(i) is int and 0 <= i < BUCKETS for i in want):
                self._send_entries(sender, name, t.in_buckets(want), "p", want=None)
        elif op not in ("d", "p"):
            self.stats["bad_messages"] += 1

    def prune(self, wall_ms: int) -> int:
        """Drop entries every node no longer retains (their tables' ``retain`` rule)."""
        dropped = 0
        for name, t in self.tables.items():
            keep = t.spec.retain
            if keep is None:
                continue
            gone = [e.key for e in t.entries() if not keep(e.key, wall_ms / 1000)]
            for k in gone:
                t.drop(k)
            if gone:
                dropped += len(gone)
                self._out.append(Changed(name, (), True))
        return dropped

    def tick(self, now: float, peer_digests: Mapping[str, Mapping[str, Any]],
             pick: Callable[[list[str]], str], wall_ms: int | None = None) -> None:
        """Anti-entropy: per table, sync with one peer whose digest differs from ours."""
        if wall_ms is not None and now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY
            self.prune(wall_ms)
        if now < self._next_sync:
            return
        self._next_sync = now + self.sync_interval
        for name, t in self.tables.items():
            mine = t.digest()
            differ = sorted(p for p, d in peer_digests.items()
                            if p != self.node_id and d.get(name, mine) != mine)
            if differ:
                peer = pick(differ)
                buckets = b"".join(h.to_bytes(8, "big") for h in t.bucket_hashes())
                self.stats["syncs_sent"] += 1
                self._out.append(Direct(peer, _pack({"o": "q", "t": name, "b": buckets})))

    def next_deadline(self) -> float:
        return self._next_sync

    # -- outputs ----------------------------------------------------------

    def digests(self) -> dict[str, str]:
        return {name: t.digest() for name, t in self.tables.items()}

    def drain(self) -> list[ReplicaAction]:
        out, self._out = self._out, []
        return out

    # -- internals --------------------------------------------------------

    def _merge(self, name: str, raw_entries: Iterable[Any], wall_ms: int,
               local: bool) -> list[Entry]:
        t = self.tables[name]
        changed: list[Entry] = []
        for raw in raw_entries:
            e = t.decode_entry(raw)
            if e is None:
                self.stats["bad_entries"] += 1
                continue
            if not self.hlc.observe(e.stamp, wall_ms):
                self.stats["future_entries"] += 1
                continue
            if t.spec.retain is not None and not t.spec.retain(e.key, wall_ms / 1000):
                self.stats["expired_entries"] += 1
                continue
            stored = t.merge(e)
            if stored is not None:
                changed.append(stored)
        if changed:
            self.stats["merged"] += len(changed)
            self._out.append(Changed(name, tuple(changed), local))
        return changed

    def _send_entries(self, to: str, name: str, entries: list[Entry], op: str,
                      want: list[int] | None) -> None:
        chunks: list[list[Any]] = [[]]
        used = 0
        for e in entries:
            enc = e.encode()
            size = len(msgpack.packb(enc))
            if chunks[-1] and used + size > CHUNK_BYTES:
                chunks.append([])
                used = 0
            chunks[-1].append(enc)
            used += size
        for i, chunk in enumerate(chunks):
            msg: dict[str, Any] = {"o": op, "t": name, "e": chunk}
            if want is not None and i == 0:
                msg["w"] = want
            self.stats["sync_entries_sent"] += len(chunk)
            self._out.append(Direct(to, _pack(msg)))


def _pack(obj: Any) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out
