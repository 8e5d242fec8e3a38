"""Membership's record exchange: each member's record, as deltas and pulls.

Theory of operation
-------------------
Records.  Each member's record travels in record messages (deltas, pulls;
see :mod:`swarmd.core.records`), rate-limited by the gossip budget.  This node's record changes go out as
deltas against the last broadcast, at most once per ``record_interval()``
(changes in between coalesce); a receiver behind the delta's base pulls the
full record (``RecordReq``), and push-pull replies carry records with their
entries.  What a record *contains* is :mod:`swarmd.core.record`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from swarmd.core import records as rec
from swarmd.core import wire
from swarmd.core.membership_state import MembershipState
from swarmd.core.membership_types import (
    _Member,
)


class RecordExchange(MembershipState):
    """Gossiping and pulling member records."""

    def set_record(self, record: Mapping[str, Any], now: float) -> None:
        """Replace our record (bumps its version); gossiped within the rate limit."""
        checked = rec.check_record(record, self.config.max_record_bytes)
        me = self._me
        if checked == dict(me.record):
            return
        me.record = MappingProxyType(checked)
        me.record_version += 1
        me.changed()
        self._rec_pending = True

    def record_interval(self) -> float:
        """Least seconds between our record broadcasts at the current swarm size."""
        size = len(wire.encode_message(wire.Record(self.node_id, self._me.record_version,
                                                   self._me.record, True)))
        return rec.min_record_interval(len(self._members), size, self.config.retransmit_mult,
                                       self.config.record_budget_bytes_per_s)

    def _bump_own_record(self, seen_version: int, force: bool = False) -> None:
        """Someone holds a record of ours at least as new as ours: an earlier
        instance of this node.  Jump above it and re-gossip the full record."""
        me = self._me
        if seen_version <= me.record_version and not force:
            return
        me.record_version = max(seen_version, me.record_version) + 1
        me.changed()
        self._rec_sent = {}
        self._rec_sent_version = 0
        self._rec_pending = True

    def _broadcast_record(self, now: float) -> None:
        me = self._me
        self._rec_pending = False
        cur = dict(me.record)
        full = wire.encode_message(wire.Record(me.node_id, me.record_version, cur, True))
        data = full
        meta: wire.Record | wire.RecordDelta = wire.Record(
            me.node_id, me.record_version, cur, True)
        if self._rec_sent_version:
            set_, unset = rec.delta(self._rec_sent, cur)
            d = wire.RecordDelta(me.node_id, me.record_version, self._rec_sent_version, set_,
                                 unset)
            ddata = wire.encode_message(d)
            if len(ddata) < len(full):
                data, meta = ddata, d
        self._queue_record(me.node_id, data, meta)
        self._rec_sent = cur
        self._rec_sent_version = me.record_version
        interval = rec.min_record_interval(len(self._members), len(data),
                                           self.config.retransmit_mult,
                                           self.config.record_budget_bytes_per_s)
        self._rec_next_at = now + interval

    def _queue_record(self, node: str, data: bytes,
                      meta: wire.Record | wire.RecordDelta) -> None:
        key = ("r", node)
        old = self._rqueue.meta(key)
        if isinstance(meta, wire.RecordDelta) and old is not None and old.version == meta.base:
            # Compose with the queued, not yet fully spread, older update so
            # that receivers who missed it can still apply this one.
            if isinstance(old, wire.Record):
                full = rec.apply_delta(old.record, meta.set, meta.unset)
                meta = wire.Record(node, meta.version, full, True)
            else:
                set_, unset = rec.compose((old.set, old.unset), (meta.set, meta.unset))
                meta = wire.RecordDelta(node, meta.version, old.base, set_, unset)
            data = wire.encode_message(meta)
        self._rqueue.put(key, data, meta)

    def _on_record(self, sender: str, r: wire.Record, now: float) -> None:
        if r.node == self.node_id:
            # Same version but other content: a past life of this node.
            same = r.version == self._me.record_version
            self._bump_own_record(r.version, force=same and dict(r.record) != dict(self._me.record))
            return
        m = self._members.get(r.node)
        if m is None or r.version <= m.record_version:
            return
        m.record = MappingProxyType(dict(r.record))
        m.record_version = r.version
        m.changed()
        self.stats["records_applied"] += 1
        self._pulling.pop(r.node, None)
        if r.relay:
            self._queue_record(r.node, wire.encode_message(r), r)

    def _on_delta(self, sender: str, d: wire.RecordDelta, now: float) -> None:
        if d.node == self.node_id:
            self._bump_own_record(d.version)
            return
        m = self._members.get(d.node)
        if m is None or d.version <= m.record_version:
            return
        if m.record_version != d.base:
            last = self._pulling.get(d.node)
            if last is None or now - last >= self.config.probe_interval:
                self._pulling[d.node] = now
                self.stats["record_pulls"] += 1
                self._send(sender, [wire.encode_message(
                    wire.RecordReq(((d.node, m.record_version),)))])
            return
        m.record = MappingProxyType(rec.apply_delta(m.record, d.set, d.unset))
        m.record_version = d.version
        m.changed()
        self.stats["records_applied"] += 1
        self._queue_record(d.node, wire.encode_message(d), d)

    @staticmethod
    def _record_reply(m: _Member) -> bytes:
        """``m``'s record as a pull reply (RECORD, relay=false)."""
        return wire.encode_message(wire.Record(m.node_id, m.record_version, dict(m.record), False))

    def _on_record_req(self, sender: str, req: wire.RecordReq) -> None:
        out = []
        for node, have in req.wants:
            m = self._members.get(node)
            if m is not None and m.record_version > have:
                out.append(self._record_reply(m))
        if out:
            self.stats["record_bytes_out"] += sum(len(m) for m in out)
            self._send_batched(sender, out)
