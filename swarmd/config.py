"""The one configuration tree of swarmd, with its defaults.

Theory of operation
-------------------
A node runs with no file at all: every field below has a default chosen so a
single machine is usable at once (the API on loopback, peers found by mDNS, a
swarm secret generated on first start and kept in ``data_dir``).  A TOML file
given with ``swarmd --config FILE`` overrides any subset of fields.

Loading is strict: an unknown key, a value of the wrong type, a bad multiaddr
or ``host:port`` raises :class:`ConfigError` naming the dotted key (for example
``p2p.seeds[1]``) and the problem; the daemon prints it and exits 2.  Checks
that need the machine (is a port free?) are done by :func:`check_ports` at
start-up, with the same error type.

The tree itself (every section and field with its default, unit and why)
is :mod:`swarmd.config_tree`, re-exported here.  The two modules are the only
ones that read the environment (``HOME``, ``XDG_RUNTIME_DIR``, user id,
hostname for defaults; ``api_key_env`` and the HF token variable when a
config names them).
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import os
import re
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli as tomllib  # the design card's TOML reader (same API as stdlib tomllib)

from swarmd.config_tree import (  # noqa: F401  (the tree, re-exported)
    ApiSection,
    Config,
    ConfigError,
    ControlSection,
    DataPlaneSection,
    EngineEntry,
    LeaseSection,
    LimitsSection,
    LocalEnginesSection,
    LogSection,
    MembershipSection,
    ModelsSection,
    NodeSection,
    P2PSection,
    RoutingSection,
    UsageSection,
    _is_root,
    default_control_socket,
    default_data_dir,
    default_name,
)
from swarmd.core.record import CAPABILITIES
from swarmd.usage.prices import parse_prices

# --------------------------------------------------------------------------
# Value checks shared with other modules.

_HOSTPORT = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-_]+):(?P<port>\d{1,5})$")


def parse_hostport(value: str) -> tuple[str, int]:
    """``"host:port"`` -> (host, port); ``[v6]:port`` accepted.  ValueError if bad."""
    m = _HOSTPORT.match(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not host:port")
    port = int(m.group("port"))
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range 0-65535")
    host = m.group("host").strip("[]")
    return host, port


def check_multiaddr(value: str, *, need_tcp: bool = True) -> None:
    """Raise ValueError unless ``value`` is a valid multiaddr with ip and tcp."""
    from multiaddr import Multiaddr  # local import: keep config import light

    try:
        ma = Multiaddr(value)
    except Exception as exc:  # the multiaddr package raises several types
        raise ValueError(f"{value!r} is not a valid multiaddr ({exc})") from None
    protos = [p.name for p in ma.protocols()]
    if need_tcp and "tcp" not in protos:
        raise ValueError(f"{value!r} has no /tcp/ part")
    if not ({"ip4", "ip6", "dns", "dns4", "dns6"} & set(protos)):
        raise ValueError(f"{value!r} has no /ip4/, /ip6/ or /dns/ part")


def check_seed(value: str) -> None:
    """A seed is a multiaddr (with or without /p2p/) or ``host:port``."""
    from swarmd.core.addrs import parse_seed

    parse_seed(value)


def parse_secret(value: str) -> bytes:
    v = value.strip()
    if not re.fullmatch(r"[0-9a-fA-F]{64}", v):
        raise ValueError("must be 64 hex characters (32 bytes)")
    return bytes.fromhex(v)


# --------------------------------------------------------------------------
# Loading.


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", str(t))


def _coerce(key: str, value: Any, ftype: str) -> Any:
    """Check/convert one TOML value against a dataclass field's type string."""
    t = ftype.replace(" ", "")
    if t == "str":
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {type(value).__name__}")
        return value
    if t == "bool":
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if t == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if t == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"expected a number, got {value!r}")
        if value < 0:
            raise ConfigError(key, f"must not be negative, got {value!r}")
        return float(value)
    if t == "Path":
        if not isinstance(value, str) or not value:
            raise ConfigError(key, "expected a non-empty path string")
        return Path(value).expanduser()
    if t == "tuple[str,...]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, "expected a list of strings")
        return tuple(value)
    if t.startswith("Mapping[str,"):
        if not isinstance(value, dict):
            raise ConfigError(key, "expected a table")
        return dict(value)
    raise ConfigError(key, f"unsupported field type {ftype}")  # pragma: no cover


def _build(cls: Any, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(prefix, "expected a table")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "api_key"}
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        if k not in fields:
            raise ConfigError(key, f"unknown key (known: {', '.join(sorted(fields))})")
        kwargs[k] = _coerce(key, v, str(fields[k].type))
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(prefix or "(top)", str(exc)) from None


_SECTIONS: dict[str, Any] = {
    "node": NodeSection,
    "p2p": P2PSection,
    "membership": MembershipSection,
    "lease": LeaseSection,
    "api": ApiSection,
    "routing": RoutingSection,
    "local_engines": LocalEnginesSection,
    "control": ControlSection,
    "log": LogSection,
    "models": ModelsSection,
    "usage": UsageSection,
    "limits": LimitsSection,
    "dataplane": DataPlaneSection,
}


def from_mapping(data: Mapping[str, Any]) -> Config:
    """Build and validate a Config from parsed TOML (a dict)."""
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name == "engines":
            kwargs["engines"] = _engines(value)
        elif name == "prices":
            kwargs["prices"] = parse_prices(value)
        elif name in _SECTIONS:
            kwargs[name] = _build(_SECTIONS[name], value, name)
        else:
            known = ", ".join(sorted([*_SECTIONS, "engines", "prices"]))
            raise ConfigError(name, f"unknown section (known: {known})")
    cfg = Config(**kwargs)
    validate(cfg)
    return cfg


def _engines(value: Any) -> tuple[EngineEntry, ...]:
    if not isinstance(value, list):
        raise ConfigError("engines", "expected an array of tables ([[engines]])")
    out: list[EngineEntry] = []
    for i, item in enumerate(value):
        key = f"engines[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(key, "expected a table")
        for req in ("kind", "url"):
            if req not in item:
                raise ConfigError(f"{key}.{req}", "missing (required)")
        entry = _build(EngineEntry, item, key)
        for j, cap in enumerate(entry.capabilities):
            if cap not in ENGINE_CAPABILITIES:
                raise ConfigError(f"{key}.capabilities[{j}]",
                                  f"{cap!r} is not one of {', '.join(ENGINE_CAPABILITIES)}")
        out.append(dataclasses.replace(entry, api_key=_resolve_key(entry, key)))
    return tuple(out)


def _resolve_key(entry: EngineEntry, key: str) -> str:
    if entry.api_key_file:
        try:
            return Path(entry.api_key_file).expanduser().read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{key}.api_key_file", f"cannot read: {exc.strerror}") from None
    if entry.api_key_env:
        val = os.environ.get(entry.api_key_env)
        if val is None:
            raise ConfigError(f"{key}.api_key_env", f"${entry.api_key_env} is not set")
        return val.strip()
    return ""


_LEVELS = ("debug", "info", "warning", "error")

#: Values of ``[[engines]] capabilities``.
ENGINE_CAPABILITIES = (*CAPABILITIES, "responses")  # responses: serves /v1/responses natively


def validate(cfg: Config) -> None:
    """Semantic checks that need no machine access."""
    if not cfg.node.name or len(cfg.node.name) > 63:
        raise ConfigError("node.name", "must be 1-63 characters")
    if not cfg.p2p.listen:
        raise ConfigError("p2p.listen", "needs at least one multiaddr")
    for i, addr in enumerate(cfg.p2p.listen):
        try:
            check_multiaddr(addr)
        except ValueError as exc:
            raise ConfigError(f"p2p.listen[{i}]", str(exc)) from None
        if "/p2p/" in addr:
            raise ConfigError(f"p2p.listen[{i}]", "a listen address carries no /p2p/ id")
    for i, seed in enumerate(cfg.p2p.seeds):
        try:
            check_seed(seed)
        except ValueError as exc:
            raise ConfigError(f"p2p.seeds[{i}]", str(exc)) from None
    if cfg.p2p.secret:
        try:
            parse_secret(cfg.p2p.secret)
        except ValueError as exc:
            raise ConfigError("p2p.secret", str(exc)) from None
    if cfg.p2p.secret and cfg.p2p.secret_file:
        raise ConfigError("p2p.secret_file", "give secret or secret_file, not both")
    _validate_membership(cfg.membership)
    lease = cfg.lease
    if not lease.duration > lease.renew_deadline > lease.retry_period > 0:
        raise ConfigError(
            "lease", "need duration > renew_deadline > retry_period > 0"
        )
    try:
        host, _ = parse_hostport(cfg.api.listen)
        ipaddress.ip_address(host) if host[0].isdigit() or ":" in host else None
    except ValueError as exc:
        raise ConfigError("api.listen", str(exc)) from None
    try:
        parse_hostport(cfg.dataplane.listen)
    except ValueError as exc:
        raise ConfigError("dataplane.listen", str(exc)) from None
    if cfg.api.ollama_listen:
        try:
            parse_hostport(cfg.api.ollama_listen)
        except ValueError as exc:
            raise ConfigError("api.ollama_listen", str(exc)) from None
    if cfg.api.event_loop not in ("auto", "uvloop", "asyncio"):
        raise ConfigError("api.event_loop", "must be auto, uvloop or asyncio")
    if cfg.api.auth not in ("required", "loopback-open", "off"):
        raise ConfigError("api.auth", "must be required, loopback-open or off")
    if cfg.api.tls not in ("", "self-signed"):
        raise ConfigError("api.tls", 'must be "" or "self-signed" (or set tls_cert/tls_key)')
    if bool(cfg.api.tls_cert) != bool(cfg.api.tls_key):
        raise ConfigError("api.tls_key" if cfg.api.tls_cert else "api.tls_cert",
                          "tls_cert and tls_key go together")
    if cfg.api.tls and cfg.api.tls_cert:
        raise ConfigError("api.tls", "give tls = \"self-signed\" or tls_cert/tls_key, not both")
    if not 0 <= cfg.limits.warn <= 1:
        raise ConfigError("limits.warn", "must be a fraction in [0, 1]")
    if cfg.limits.webhook and not re.match(r"^https?://", cfg.limits.webhook):
        raise ConfigError("limits.webhook", f"{cfg.limits.webhook!r} is not an http(s) URL")
    if cfg.limits.default_max_tokens < 1:
        raise ConfigError("limits.default_max_tokens", "must be >= 1")
    if cfg.usage.retention_days < 1:
        raise ConfigError("usage.retention_days", "must be >= 1")
    if cfg.usage.flush_interval <= 0:
        raise ConfigError("usage.flush_interval", "must be > 0 seconds")
    if cfg.api.max_body_bytes <= 0:
        raise ConfigError("api.max_body_bytes", "must be positive")
    for key, backlog in (("api.backlog", cfg.api.backlog),
                         ("dataplane.backlog", cfg.dataplane.backlog)):
        if not 1 <= backlog <= 65535:
            raise ConfigError(key, "must be 1 to 65535 (connections queued for accept)")
    if cfg.routing.queue_timeout < 0:
        raise ConfigError("routing.queue_timeout", "must be >= 0 seconds")
    if cfg.routing.queue_max < 0:
        raise ConfigError("routing.queue_max", "must be >= 0")
    for name, target in cfg.routing.aliases.items():
        if not isinstance(target, str) or not target:
            raise ConfigError(f"routing.aliases.{name}", "alias target must be a model name")
    if not 0 < cfg.routing.spill_load <= 10:
        raise ConfigError("routing.spill_load", "must be in (0, 10]")
    for i, eng in enumerate(cfg.engines):
        if not re.match(r"^https?://", eng.url):
            raise ConfigError(f"engines[{i}].url", f"{eng.url!r} is not an http(s) URL")
    if cfg.log.level.lower() not in _LEVELS:
        raise ConfigError("log.level", f"must be one of {', '.join(_LEVELS)}")
    if cfg.log.format not in ("text", "json"):
        raise ConfigError("log.format", "must be text or json")
    _validate_models(cfg.models)


def _validate_membership(m: MembershipSection) -> None:
    from swarmd.core.membership import PROFILES, MembershipConfig

    if m.profile not in PROFILES:
        raise ConfigError(
            "membership.profile", f"unknown profile {m.profile!r} (known: {', '.join(PROFILES)})"
        )
    for key in ("load_interval", "load_heartbeat"):
        if not getattr(m, key) > 0:
            raise ConfigError(f"membership.{key}", "must be positive (seconds)")
    names = {f.name for f in dataclasses.fields(MembershipConfig)}
    for k, v in m.overrides.items():
        if k not in names:
            raise ConfigError(f"membership.overrides.{k}", "unknown membership field")
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
            raise ConfigError(f"membership.overrides.{k}", "expected a non-negative number")


def _validate_models(m: ModelsSection) -> None:
    for key in ("max_disk", "max_transfer_rate"):
        if getattr(m, key) < 0:
            raise ConfigError(f"models.{key}", "must be >= 0 bytes (0 = unlimited)")
    if m.load_timeout <= 0:
        raise ConfigError("models.load_timeout", "must be > 0 seconds")
    if m.keep_alive < 0:
        raise ConfigError("models.keep_alive", "must be >= 0 seconds (0 = never unload)")
    for key in ("hf_endpoint", "ollama_registry"):
        if not re.match(r"^https?://[^/\s]+", getattr(m, key)):
            raise ConfigError(f"models.{key}", f"{getattr(m, key)!r} is not an http(s) URL")


def models_dir(cfg: Config) -> Path:
    """The model store directory: ``[models] dir`` or ``data_dir/models``."""
    return Path(cfg.models.dir).expanduser() if cfg.models.dir else cfg.node.data_dir / "models"


def ollama_dir(m: ModelsSection) -> Path | None:
    """The local Ollama store to import from, if configured or present."""
    if m.ollama_dir:
        return Path(m.ollama_dir).expanduser()
    default = Path.home() / ".ollama" / "models"
    return default if default.is_dir() else None


def resolve_hf_token(m: ModelsSection) -> str | None:
    """The Hub token: ``hf_token_file``, else ``$HF_TOKEN``, else None (the one place read)."""
    if m.hf_token_file:
        try:
            return Path(m.hf_token_file).expanduser().read_text().strip() or None
        except OSError as exc:
            raise ConfigError("models.hf_token_file", f"cannot read: {exc.strerror}") from None
    return os.environ.get("HF_TOKEN") or None


def membership_config(cfg: Config) -> Any:
    """The effective MembershipConfig: the profile plus overrides."""
    from swarmd.core.membership import PROFILES

    base = PROFILES[cfg.membership.profile]
    overrides: dict[str, Any] = dict(cfg.membership.overrides)
    return dataclasses.replace(base, **overrides)


def load(path: Path | None) -> Config:
    """Load ``path`` (None = embedded defaults only)."""
    if path is None:
        cfg = Config()
        validate(cfg)
        return cfg
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from None
    return from_mapping(data)


def check_ports(cfg: Config) -> None:
    """Fail early, naming the key, when a configured port is already taken."""
    host, port = parse_hostport(cfg.api.listen)
    _check_bind("api.listen", host, port)
    if cfg.dataplane.enabled:
        dhost, dport = parse_hostport(cfg.dataplane.listen)
        _check_bind("dataplane.listen", dhost, dport)
    for i, addr in enumerate(cfg.p2p.listen):
        parts = addr.strip("/").split("/")
        if len(parts) >= 4 and parts[0] in ("ip4", "ip6") and parts[2] == "tcp":
            _check_bind(f"p2p.listen[{i}]", parts[1], int(parts[3]))


def _check_bind(key: str, host: str, port: int) -> None:
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(key, f"port {port} on {host} is already taken") from None
            raise ConfigError(key, f"cannot bind {host}:{port}: {exc.strerror}") from None


def to_toml(cfg: Config) -> str:
    """Render the effective config as TOML (for ``swarmd --print-config``).

    Secrets are masked: the output is safe to paste in a bug report.
    """
    lines: list[str] = []
    for name in _SECTIONS:
        section = getattr(cfg, name)
        lines.append(f"[{name}]")
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if f.name == "secret" and value:
                value = "<set>"
            lines.append(f"{f.name} = {_toml_value(value)}")
        lines.append("")
    for eng in cfg.engines:
        lines.append("[[engines]]")
        for f in dataclasses.fields(eng):
            if f.name == "api_key":
                continue
            lines.append(f"{f.name} = {_toml_value(getattr(eng, f.name))}")
        lines.append("")
    for price in cfg.prices:
        lines += ["[[prices]]", f"model = {_toml_str(price.model)}",
                  f"input = {price.usd_per_1m_input!r}", f"output = {price.usd_per_1m_output!r}",
                  ""]
    return "\n".join(lines)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, Path):
        return _toml_str(str(v))
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, Sequence):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_toml_str(str(k))} = {_toml_value(x)}" for k, x in v.items()) + " }"
    return _toml_str(str(v))


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
