"""``swarmd``: the daemon's entry point.

Parses the command line, loads and checks the config (a bad one names the key
and exits 2), sets up logging, then hands over to :mod:`swarmd.runtime.assembly`
(the composition root).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from swarmd import __version__
from swarmd.config import Config, ConfigError, check_ports, load, to_toml, validate
from swarmd.join_token import JoinTokenError, decode_join_token
from swarmd.runtime import lean_imports
from swarmd.swarm_secret import save_join, saved_seeds

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="swarmd",
        description="Peer-to-peer inference cluster daemon: run one on every machine.",
    )
    p.add_argument("--config", type=Path, help="TOML config file (default: embedded defaults)")
    p.add_argument("--print-config", action="store_true", help="print the effective config and exit")
    p.add_argument("--log-level", help="debug, info, warning, error (overrides log.level)")
    p.add_argument("--log-format", choices=["text", "json"], help="overrides log.format")
    p.add_argument("--name", help="overrides node.name")
    p.add_argument("--data-dir", type=Path, help="overrides node.data_dir")
    p.add_argument("--listen", action="append", help="p2p listen multiaddr (repeatable)")
    p.add_argument("--seed", action="append", help="seed peer (repeatable)")
    p.add_argument("--no-mdns", action="store_true", help="turn mDNS discovery off")
    p.add_argument("--api-listen", help="host:port of the OpenAI-compatible port")
    p.add_argument("--socket", type=Path, help="control socket path")
    p.add_argument("--profile", help="membership timing profile: lan, wan, local")
    p.add_argument("--join", metavar="TOKEN", help="join token printed by `swarmctl join`")
    p.add_argument("--version", action="version", version=f"swarmd {__version__}")
    return p


def _apply_flags(cfg: Config, ns: argparse.Namespace) -> Config:
    node, p2p, api, control, log, mem = cfg.node, cfg.p2p, cfg.api, cfg.control, cfg.log, cfg.membership
    if ns.name:
        node = dataclasses.replace(node, name=ns.name)
    if ns.data_dir:
        node = dataclasses.replace(node, data_dir=ns.data_dir)
    if ns.listen:
        p2p = dataclasses.replace(p2p, listen=tuple(ns.listen))
    if ns.seed:
        p2p = dataclasses.replace(p2p, seeds=p2p.seeds + tuple(ns.seed))
    if ns.no_mdns:
        p2p = dataclasses.replace(p2p, mdns=False)
    if ns.join:
        try:
            token = decode_join_token(ns.join)
        except JoinTokenError as exc:
            raise ConfigError("--join", str(exc)) from None
        p2p = dataclasses.replace(
            p2p, secret=token.secret.hex(), secret_file="", seeds=p2p.seeds + token.seeds
        )
    elif not p2p.secret and not p2p.secret_file:
        # Rejoin the swarm an earlier --join joined (its secret is read from
        # data_dir by swarm_secret.load_secret).
        extra = tuple(s for s in saved_seeds(node.data_dir) if s not in p2p.seeds)
        p2p = dataclasses.replace(p2p, seeds=p2p.seeds + extra)
    if ns.api_listen:
        api = dataclasses.replace(api, listen=ns.api_listen)
    if ns.socket:
        control = dataclasses.replace(control, socket=ns.socket)
    if ns.log_level:
        log = dataclasses.replace(log, level=ns.log_level)
    if ns.log_format:
        log = dataclasses.replace(log, format=ns.log_format)
    if ns.profile:
        mem = dataclasses.replace(mem, profile=ns.profile)
    out = dataclasses.replace(
        cfg, node=node, p2p=p2p, api=api, control=control, log=log, membership=mem
    )
    validate(out)
    return out


def _check_engine_kinds(cfg: Config) -> None:
    """Every ``[[engines]] kind`` names a built-in or installed plugin."""
    if not cfg.engines:
        return
    from swarmd.engines.registry import EngineKindError, default_registry

    registry = default_registry()
    known = registry.kinds()
    for i, entry in enumerate(cfg.engines):
        if entry.kind not in known:
            raise ConfigError(f"engines[{i}].kind",
                              f"unknown engine kind {entry.kind!r} (known: {', '.join(known)})")
        try:
            registry.get(entry.kind)
        except EngineKindError as exc:
            raise ConfigError(f"engines[{i}].kind", str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    lean_imports.install()  # before anything imports py-libp2p
    ns = _parser().parse_args(argv)
    try:
        cfg = _apply_flags(load(ns.config), ns)
        if ns.print_config:
            sys.stdout.write(to_toml(cfg))
            return 0
        check_ports(cfg)
        _check_engine_kinds(cfg)
        if ns.join:
            token = decode_join_token(ns.join)
            save_join(cfg.node.data_dir, token.secret, token.seeds)
    except ConfigError as exc:
        print(f"swarmd: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    from swarmd import log
    from swarmd.runtime.assembly import run_node

    log.setup(cfg.log.level, cfg.log.format)
    try:
        return run_node(cfg)
    except ConfigError as exc:
        print(f"swarmd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
