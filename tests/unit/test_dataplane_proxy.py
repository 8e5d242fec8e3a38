"""The real API server forwarding over the data plane: the retry-before-first-byte rule.

Node A (ApiServer, DataPlaneClient as its Forwarder) routes to engines on
nodes B and C (DataPlaneServers in front of SIMULATED engines).  B dies; every
request still succeeds, because an attempt that fails before the first byte is
retried on C.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from swarmd.api.app import ApiDeps, ApiServer
from swarmd.api.upstream import Deadlines, LocalUpstream, ProxyRequest
from swarmd.config import ApiSection, RoutingSection
from swarmd.dataplane import node_cert
from swarmd.dataplane.client import DataPlaneClient
from swarmd.dataplane.server import DataPlaneServer
from swarmd.engines.simulated import start_simulated_engine
from swarmd.identity import Identity
from swarmd.testing.swarm_snapshot import node, snapshot
from tests.unit.test_dataplane import MODEL, SECRET, Engines

A, B, C = Identity.generate(), Identity.generate(), Identity.generate()


def test_node_death_before_first_byte_is_retried_on_another_node() -> None:
    async def go() -> None:
        alive = {A.peer_id, B.peer_id, C.peer_id}
        engines, sessions, servers, ports = [], [], {}, {}
        for ident in (B, C):
            eng = await start_simulated_engine(model=MODEL)
            sess = LocalUpstream.new_session()
            local = LocalUpstream(Engines({"e1": eng.url}), sess)

            async def open_local(eid: str, req: ProxyRequest, dl: Deadlines,
                                 local: LocalUpstream = local) -> Any:
                return await local.open(eid, req, dl)

            srv = DataPlaneServer(cert=node_cert(ident, SECRET),
                                  is_admitted=lambda p: p in alive, open_local=open_local)
            ports[ident.peer_id] = await srv.start()
            servers[ident.peer_id] = srv
            engines.append(eng)
            sessions.append(sess)
        client = DataPlaneClient(node_cert(A, SECRET), lambda p: p in alive,
                                 lambda n: ("127.0.0.1", ports[n]) if n in ports else None)
        rec = [{"id": "e1", "kind": "simulated", "healthy": True, "models": [MODEL]}]
        snap = snapshot(others=[node(B.peer_id, rec), node(C.peer_id, rec)],
                        self_id=A.peer_id)
        api = ApiServer(ApiDeps(api=ApiSection(listen="127.0.0.1:0"),
                                routing=RoutingSection(), snapshot=lambda: snap,
                                remote=client))
        await api.start()
        def body(i: int) -> dict[str, Any]:  # distinct prompts: no affinity to one node
            return {"model": MODEL, "messages": [{"role": "user", "content": f"hi {i}"}],
                    "stream": True}
        try:
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{api.port}/v1/chat/completions"
                async with http.post(url, json=body(-1)) as r:  # both alive: warm pools
                    assert r.status == 200
                await servers[B.peer_id].stop()  # B dies (membership has not noticed yet)
                seen = set()
                for i in range(40):
                    if i >= 4 and client.stats["errors"]:
                        break
                    async with http.post(url, json=body(i)) as r:
                        text = await r.text()
                        assert r.status == 200, text
                        assert text.endswith("data: [DONE]\n\n")
                        seen.add(r.headers["X-Swarmd-Node"])
                        json.loads(text.split("\n\n")[0][len("data: "):])
                assert seen == {C.peer_id}
                assert client.stats["errors"] >= 1  # B was tried, and failed before a byte
        finally:
            await api.stop()
            await client.close()
            for srv in servers.values():
                await srv.stop()
            for s in sessions:
                await s.close()
            for e in engines:
                await e.stop()

    asyncio.run(asyncio.wait_for(go(), 30))
