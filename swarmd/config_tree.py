"""The configuration tree: every section and field, with its default, unit and why.

:mod:`swarmd.config` loads a TOML file into these dataclasses (strictly:
unknown keys and wrong types name the key and exit 2) and re-exports them;
read a field's comment here for what it means.  The defaults that depend on
the machine (data dir, control socket, node name) are the only environment
reads, and happen only when a default is needed.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration problem, naming the dotted key at fault."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config error at {key}: {problem}")
        self.key = key
        self.problem = problem


# --------------------------------------------------------------------------
# Defaults that depend on the machine (the only environment reads).


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def default_name() -> str:
    """The node name when none is configured: the host name."""
    return socket.gethostname().split(".")[0] or "swarmd"


def default_data_dir() -> Path:
    """Where the identity key, swarm secret and state live."""
    if _is_root():
        return Path("/var/lib/swarmd")
    return Path.home() / ".local" / "share" / "swarmd"


def default_control_socket() -> Path:
    """The control socket that ``swarmctl`` uses when given no ``--socket``."""
    if _is_root():
        return Path("/run/swarmd/swarmd.sock")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "swarmd" / "swarmd.sock"
    return Path.home() / ".local" / "state" / "swarmd" / "swarmd.sock"


# --------------------------------------------------------------------------
# The tree.  Every field says its unit and why it has its default.


@dataclass(frozen=True)
class NodeSection:
    #: Human-readable node name shown by ``swarmctl``; default the host name.
    name: str = field(default_factory=default_name)
    #: Directory for ``identity.key`` (Ed25519, mode 0600), ``swarm.secret``
    #: and other state.  Created on start.
    data_dir: Path = field(default_factory=default_data_dir)
    #: Seconds a graceful stop (SIGTERM, ``swarmctl leave``) may take before
    #: the process exits anyway, status 1, with a log line saying so.  Covers
    #: the leave gossip (~1 s), closing listeners and engines' sessions (5 s
    #: each at most); 10 s is under the shipped unit's TimeoutStopSec=15, so
    #: the daemon, not systemd's SIGKILL, decides how it ends.
    stop_timeout: float = 10.0


@dataclass(frozen=True)
class P2PSection:
    #: libp2p listen multiaddrs (TCP).  0.0.0.0 so other machines can reach
    #: this one; admission (the swarm secret) keeps strangers out.
    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/4100",)
    #: Peers to introduce ourselves to: ``/ip4/H/tcp/P/p2p/ID``,
    #: ``/ip4/H/tcp/P`` or ``host:port``.  Re-dialled every
    #: ``seed_retry_interval`` while they are not members.
    seeds: tuple[str, ...] = ()
    #: Find peers on the local link with mDNS (zeroconf).
    mdns: bool = True
    #: Network interface names mDNS binds to; empty = all.  zeroconf is more
    #: reliable bound to one interface (python-zeroconf issue 54).
    mdns_interfaces: tuple[str, ...] = ()
    #: The swarm secret: 64 hex chars (32 bytes).  Only nodes that know it are
    #: admitted.  Empty = read ``secret_file``, else ``data_dir/swarm.secret``
    #: (generated on first start).
    secret: str = ""
    #: File holding the secret as 64 hex chars.
    secret_file: str = ""
    #: Seconds between re-dials of seeds that are not members yet.
    seed_retry_interval: float = 5.0


@dataclass(frozen=True)
class MembershipSection:
    #: Named timing profile: ``lan`` (memberlist LAN defaults), ``wan`` or
    #: ``local`` (loopback tests).  See swarmd.core.membership.PROFILES.
    profile: str = "lan"
    #: Field overrides applied on top of the profile, e.g.
    #: ``probe_interval = 0.5`` (units as in MembershipConfig's docs).
    overrides: Mapping[str, float | int] = field(default_factory=dict)
    #: Seconds between refreshes of this node's load in its gossiped record.
    #: The gossip layer may stretch it on large swarms to hold its budget.
    load_interval: float = 2.0
    #: Seconds after which our load is gossiped even if no figure moved past
    #: its tolerance (swarmd.core.load_change: 5 points of CPU or GPU %, 3 C,
    #: 0.5 of load average, 5% of memory or power).  Between two such changes
    #: an idle node sends no load updates, which keeps an idle swarm quiet;
    #: a reader's view of a node's host load is never older than this.
    load_heartbeat: float = 30.0


@dataclass(frozen=True)
class LeaseSection:
    #: Seconds a coordinator lease lasts without renewal (client-go: 15 s).
    duration: float = 15.0
    #: Seconds within which a holder must renew or step down (< duration).
    renew_deadline: float = 10.0
    #: Seconds between renewals and acquisition attempts (< renew_deadline).
    retry_period: float = 2.0


@dataclass(frozen=True)
class ApiSection:
    #: host:port of the OpenAI-compatible HTTP port.  Loopback by default:
    #: opening it to the network is a deliberate choice.
    listen: str = "127.0.0.1:4180"
    #: Largest request body accepted, bytes (413 above it).
    max_body_bytes: int = 8 * 1024 * 1024
    #: Seconds to connect to an engine or open a stream to a peer (502 after).
    connect_timeout: float = 5.0
    #: Seconds to wait for the first byte of an answer (504 after).  Long,
    #: since a cold engine may load a model first.
    first_byte_timeout: float = 300.0
    #: Seconds between two chunks of a streaming answer before giving up.
    idle_timeout: float = 120.0
    #: Seconds a whole request may take (504 after).
    request_timeout: float = 1800.0
    #: host:port of a second listener serving only Ollama's native API
    #: (``/api/*``, ``GET /``), for Ollama clients that assume port 11434
    #: (e.g. ``127.0.0.1:11434``).  The API port serves those routes too.
    #: Empty = off, the default: a local Ollama may hold 11434.
    ollama_listen: str = ""
    #: Connections the kernel queues for accept on the API port (and on
    #: ``ollama_listen``); the kernel caps it at ``net.core.somaxconn``.  The
    #: usual default of 128 overflowed when 500 clients connected at once, and
    #: each dropped SYN cost its client a 1 s retransmit (then 3 s, 7 s ...).
    backlog: int = 4096
    #: Who may use the API port (swarmd/api/auth.py): ``"loopback-open"``
    #: (no key needed from 127.0.0.1/::1, a key from anywhere else),
    #: ``"required"`` (a key for every route but health checks) or ``"off"``
    #: (no checks; logged as a warning when ``listen`` is not loopback).
    #: Keys: ``swarmctl keys create``.
    auth: str = "loopback-open"
    #: TLS on the API port: ``""`` (plain HTTP), ``"self-signed"`` (a
    #: certificate generated once into data_dir, its SHA-256 fingerprint in
    #: ``swarmctl status``), or set ``tls_cert`` and ``tls_key``.
    tls: str = ""
    #: PEM certificate chain and private key files for the API port.
    tls_cert: str = ""
    tls_key: str = ""
    #: The event loop of the HTTP side (API port, data plane, control
    #: socket): ``"auto"`` (uvloop when it is installed, else asyncio),
    #: ``"uvloop"`` (an error at start when it is not) or ``"asyncio"``.
    event_loop: str = "auto"


@dataclass(frozen=True)
class RoutingSection:
    #: Model name aliases: a request for the key is served as the value.
    aliases: Mapping[str, str] = field(default_factory=dict)
    #: Number of leading messages hashed for prefix affinity.
    affinity_messages: int = 2
    #: Load (in-flight / capacity) above which affinity spills to others.
    spill_load: float = 0.8
    #: Seconds a request may wait in this node's queue for a free engine slot
    #: when every engine serving its model is at capacity (429 with
    #: Retry-After after).  Ollama waits without limit; two minutes covers a
    #: few long generations ahead in line on a small swarm.
    queue_timeout: float = 120.0
    #: Most requests waiting per model on this node (429 at once past it).
    #: Ollama's default queue (OLLAMA_MAX_QUEUE) holds 512.
    queue_max: int = 512


@dataclass(frozen=True)
class EngineEntry:
    #: Engine kind: a built-in (llamacpp, ollama, vllm, tgi, mlx, openai,
    #: simulated) or a plugin's entry point name.
    kind: str
    #: Base URL of the engine, e.g. ``http://127.0.0.1:8080``.
    url: str
    #: Node-local id; default ``<kind>-<port>``.
    id: str = ""
    #: Static model list / allow-list; empty = ask the engine.
    models: tuple[str, ...] = ()
    #: File holding an API key for the upstream (never gossiped or logged).
    api_key_file: str = ""
    #: Environment variable holding that key (read here, at config load).
    api_key_env: str = ""
    #: Max concurrent requests the engine handles well, if known.
    capacity: int = 0
    #: What it serves: any of "chat", "completions", "embeddings".  Empty:
    #: learn it from the engine where it tells, else assume all three.
    capabilities: tuple[str, ...] = ()
    #: Resolved key (from api_key_file / api_key_env), not a TOML key.
    api_key: str = field(default="", repr=False)


@dataclass(frozen=True)
class LocalEnginesSection:
    #: Probe the usual local ports (llama.cpp 8080, Ollama 11434, vLLM 8000,
    #: ...) for engines nobody configured.
    detect: bool = True
    #: Seconds between health/model/load polls of local engines.
    poll_interval: float = 2.0


@dataclass(frozen=True)
class ControlSection:
    #: Unix socket of the local control API used by ``swarmctl``.
    socket: Path = field(default_factory=default_control_socket)


@dataclass(frozen=True)
class LogSection:
    #: debug, info, warning, error.
    level: str = "info"
    #: ``text`` for people, ``json`` for log collectors (one object a line).
    format: str = "text"


@dataclass(frozen=True)
class ModelsSection:
    """The node's model store (swarmd/models/, protocol/models.md)."""

    #: Store directory (blobs, manifests, partial downloads).  Empty =
    #: ``data_dir/models``, beside the node's other state.
    dir: str = ""
    #: Most bytes the store may hold; 0 = unlimited.  Past it a pull evicts
    #: the least recently used models no engine uses, or fails.
    max_disk: int = 0
    #: Bytes/s all model transfers together may use; 0 = unlimited.  Set it
    #: below the link rate so inference traffic keeps room during a pull.
    max_transfer_rate: int = 0
    #: Accept pickle-based weights (``.bin``, ``.pt``, ``.ckpt``).  Off: loading
    #: a pickle can run arbitrary code.
    allow_pickle: bool = False
    #: Hugging Face Hub endpoint (a mirror, or a local fake in tests).
    hf_endpoint: str = "https://huggingface.co"
    #: File holding a Hub token (gated and private repos).  Empty = the
    #: ``HF_TOKEN`` environment variable if set, else no token.
    hf_token_file: str = ""
    #: Ollama registry for ``ollama:`` sources.
    ollama_registry: str = "https://registry.ollama.ai"
    #: An existing local Ollama store to import from by hard link before
    #: asking the registry.  Empty = ``~/.ollama/models`` when it exists.
    ollama_dir: str = ""
    #: Start a model on demand: a request for a model that some node's store
    #: holds but no engine serves deploys it (one replica, placed by the
    #: coordinator as ``swarmctl run`` would) and waits for it.  Off: 404.
    on_demand: bool = True
    #: Seconds a request waits for an on-demand model to be fetched, placed
    #: and loaded before it fails with 503 ``model_load_timeout``.  A model
    #: from a peer on a LAN loads in seconds; a first load of a large model
    #: from disk can take minutes.
    load_timeout: float = 120.0
    #: Seconds an on-demand model may sit idle (no request in flight on its
    #: engine) before it is unloaded everywhere, as Ollama's ``keep_alive``.
    #: 0 = never unload.  Deployments made by ``swarmctl run`` always stay.
    keep_alive: float = 300.0


@dataclass(frozen=True)
class UsageSection:
    """Per-request usage records (swarmd/usage/store.py) and their counters."""

    #: SQLite file of this node's usage records.  Empty = ``data_dir/usage.db``.
    db: str = ""
    #: Days of per-request rows kept on this node (older ones are pruned
    #: hourly).  Swarm-wide counters keep 48 h, 35 days and 13 months
    #: (swarmd/core/usage_counters.py) whatever this says.
    retention_days: int = 90
    #: Seconds between flushes of this node's counters into the replicated
    #: table (one gossip message per flush while requests flow).
    flush_interval: float = 1.0


@dataclass(frozen=True)
class LimitsSection:
    """Budgets and rate limits of API keys (swarmd/api/limits.py, swarmd/core/escrow.py)."""

    #: ``max_tokens`` given to a request of a key with a budget when the
    #: request sets none: its reservation must be bounded.  Tokens.
    default_max_tokens: int = 1024
    #: Seconds a request waits for budget shares to arrive from other nodes
    #: when this node's share is short (429 ``insufficient_quota`` after).
    borrow_wait: float = 2.0
    #: Seconds after start during which budgeted requests wait for this
    #: node's own spending to be read back from peers (it may have spent
    #: more than its disk says just before a crash); ends early once a peer's
    #: copy of the shares table matches ours.
    startup_hold: float = 5.0
    #: Seconds between this node's publications of its per-key request and
    #: token rates (rate limits are swarm-wide: each node adds the others'
    #: last published minute to its own).
    rate_publish_interval: float = 1.0
    #: Fraction of a key's budget whose use is warned about (a log line, the
    #: ``swarmd_budget_used`` gauge, and a POST to ``webhook``); user and
    #: project budgets set their own.  0: no warnings.
    warn: float = 0.8
    #: URL the coordinator POSTs a JSON warning to when a budget passes its
    #: warn fraction (``{"budget", "owner", "kind", "window", "used",
    #: "amount", "resets_at"}``).  Empty: none.
    webhook: str = ""


@dataclass(frozen=True)
class DataPlaneSection:
    """Forwarded requests and model files between nodes (swarmd/dataplane/, protocol/dataplane.md)."""

    #: Serve and use the data plane (HTTP/1.1 over mutually authenticated TLS,
    #: about 30x libp2p's throughput here).  false: forwards use the libp2p
    #: protocol only and peers cannot fetch models from this node.
    enabled: bool = True
    #: host:port the data plane listens on.  0.0.0.0 so other machines can
    #: reach it; the address is gossiped in the node record (``dp``), so port
    #: 0 (an ephemeral port) works too.  Only admitted, alive members get past
    #: the TLS handshake: no stranger's request is ever parsed.
    listen: str = "0.0.0.0:4101"
    #: Connections the kernel queues for accept on the data plane (capped at
    #: ``net.core.somaxconn``): a burst of forwarded streams opens one
    #: connection each, and asyncio's default of 100 overflowed at 500 at
    #: once (a dropped SYN: a 1 s retransmit, then 3 s ...).
    backlog: int = 4096


@dataclass(frozen=True)
class Config:
    node: NodeSection = field(default_factory=NodeSection)
    p2p: P2PSection = field(default_factory=P2PSection)
    membership: MembershipSection = field(default_factory=MembershipSection)
    lease: LeaseSection = field(default_factory=LeaseSection)
    api: ApiSection = field(default_factory=ApiSection)
    routing: RoutingSection = field(default_factory=RoutingSection)
    engines: tuple[EngineEntry, ...] = ()
    local_engines: LocalEnginesSection = field(default_factory=LocalEnginesSection)
    control: ControlSection = field(default_factory=ControlSection)
    log: LogSection = field(default_factory=LogSection)
    models: ModelsSection = field(default_factory=ModelsSection)
    usage: UsageSection = field(default_factory=UsageSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    dataplane: DataPlaneSection = field(default_factory=DataPlaneSection)
    #: ``[[prices]]``: USD per 1M input/output tokens by model glob
    #: (swarmd/usage/prices.py); unpriced models cost 0.
    prices: tuple[Any, ...] = ()
