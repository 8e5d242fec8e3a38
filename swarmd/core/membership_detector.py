"""Membership's failure detector: SWIM probes with Lifeguard's refinements.

Theory of operation
-------------------
Failure detection (SWIM).  Every ``probe_interval * (awareness + 1)`` we ping
the next member of a shuffled round-robin list.  No ack within
``probe_timeout`` -> ask ``indirect_checks`` random peers to ping it for us
(ping-req, they nack if they get no ack either).  No ack from anyone by the
end of the interval -> we *suspect* it.  A suspect has a Lifeguard suspicion
timeout (max, shrinking to min with independent confirmations; see
:mod:`swarmd.core.lifeguard`) to refute before we declare it *dead*.

A lost transport connection is a hint (:meth:`FailureDetector.hint_unreachable`):
the member is probed at once instead of when the round reaches it.
"""

from __future__ import annotations

from swarmd.core import wire
from swarmd.core.membership_state import MembershipState
from swarmd.core.membership_types import (
    MemberState,
    _Probe,
)


class FailureDetector(MembershipState):
    """Probing, indirect probing and its verdicts."""

    def hint_unreachable(self, node_id: str, now: float) -> None:
        """The transport lost its connection to ``node_id``: probe it next.

        A crashed process's peers see its connections reset at once; probing
        it now (beside the scheduled probe if one is in flight, else as the
        next one), instead of whenever the shuffled round reaches it (up to
        N-1 intervals), lets every survivor suspect it within one probe
        interval, so confirmations come together and the suspicion timeout
        shrinks to its minimum.  Only when it is probed changes: a member is
        still declared dead only after failed direct and indirect probes and
        the suspicion timeout, so a spurious disconnect costs one probe.  At
        most one hint per member per ``probe_interval``.
        """
        if self._left or node_id not in self._live:
            return
        last = self._hinted.get(node_id)
        if last is not None and now - last < self.config.probe_interval:
            return
        self._hinted[node_id] = now
        self.stats["probe_hints"] += 1
        if any(q.target == node_id for q in self._in_flight()):
            return
        p = self._probe
        if p is not None and self._urgent is None:
            # A scheduled probe of another member is in flight: probe this
            # one beside it now rather than after it (up to an interval).
            interval = self._awareness.scale(self.config.probe_interval)
            self._urgent = self._launch_probe(node_id, now, now + interval)
            return
        rest = self._probe_list[self._probe_idx:]
        if node_id in rest:
            del self._probe_list[self._probe_idx + rest.index(node_id)]
        self._probe_list.insert(self._probe_idx, node_id)
        if p is None:
            self._next_probe = min(self._next_probe, now)

    def _pick_target(self) -> str | None:
        for _ in range(2):
            while self._probe_idx < len(self._probe_list):
                node = self._probe_list[self._probe_idx]
                self._probe_idx += 1
                m = self._members.get(node)
                if m is not None and m.state in (MemberState.ALIVE, MemberState.SUSPECT):
                    return node
            self._probe_list = [n for n in self._live]
            self._rng.shuffle(self._probe_list)
            self._probe_idx = 0
        return None

    def _start_probe(self, now: float, end_at: float) -> None:
        target = self._pick_target()
        if target is None:
            return
        self._probe = self._launch_probe(target, now, end_at)

    def _in_flight(self) -> list[_Probe]:
        """The scheduled probe and the hinted one, those that are running."""
        return [p for p in (self._probe, self._urgent) if p is not None]

    def _launch_probe(self, target: str, now: float, end_at: float) -> _Probe:
        seq = self._next_seq()
        probe = _Probe(target, seq, now + self.config.probe_timeout, end_at)
        self.stats["probes"] += 1
        msgs = [wire.encode_message(wire.Ping(seq, target))]
        m = self._members[target]
        if m.state is MemberState.SUSPECT:
            # memberlist: tell a suspect it is suspected, so it can refute even
            # if the gossip about it ran out while it was unreachable.
            msgs.append(wire.encode_message(wire.Suspect(target, m.incarnation, self.node_id)))
        self._send(target, msgs, piggyback=True)
        return probe

    def _send_indirect(self, p: _Probe) -> None:
        p.indirect_sent = True
        peers = self._live.sample(self._rng, self.config.indirect_checks,
                                  exclude=frozenset((p.target,)))
        m = self._members.get(p.target)
        if not peers or m is None:
            return
        self.stats["indirect_probes"] += 1
        p.expected_nacks = len(peers)
        msg = wire.encode_message(wire.PingReq(p.seq, p.target, m.addrs, True))
        for peer in peers:
            self._send(peer, [msg])

    def _finish_probe(self, p: _Probe, now: float) -> None:
        if self._probe is p:
            self._probe = None
        if self._urgent is p:
            self._urgent = None
        if p.acked:
            return
        if p.expected_nacks > 0:
            self._awareness.apply(max(0, p.expected_nacks - p.nacks))
        else:
            self._awareness.apply(1)
        self.stats["probe_failures"] += 1
        m = self._members.get(p.target)
        if m is not None and m.state in (MemberState.ALIVE, MemberState.SUSPECT):
            # On a suspect this is an independent confirmation (memberlist
            # probeNode -> suspectNode): it shortens the Lifeguard timeout.
            self._on_suspect(wire.Suspect(p.target, m.incarnation, self.node_id), now)
