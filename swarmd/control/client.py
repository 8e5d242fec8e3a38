"""A small synchronous client for the control API (stdlib only).

``swarmctl`` must start fast, so this module imports nothing beyond the
standard library: :class:`UnixHTTPConnection` is ``http.client`` over an
``AF_UNIX`` socket.  Every failure becomes a :class:`ControlError` carrying a
message for a human and the exit code ``swarmctl`` should use (2: daemon not
reachable, 1: the daemon answered with an error).
"""

from __future__ import annotations

import errno
import http.client
import json
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:  # the documents' types only; nothing is imported at run time
    from swarmd.core.views import ModelsDoc, NodesDoc, StatusDoc

EXIT_DAEMON_ERROR = 1
EXIT_NOT_RUNNING = 2


class ControlError(Exception):
    def __init__(self, message: str, exit_code: int, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.status = status


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class ControlClient:
    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.timeout = timeout

    def request(self, method: str, url: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn = UnixHTTPConnection(str(self.path), self.timeout)
        try:
            try:
                conn.request(method, url, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except FileNotFoundError:
                raise ControlError(
                    f"swarmd is not running (no socket at {self.path})", EXIT_NOT_RUNNING
                ) from None
            except PermissionError:
                raise ControlError(
                    f"permission denied on {self.path} (run swarmctl as the user running swarmd)",
                    EXIT_NOT_RUNNING,
                ) from None
            except ConnectionRefusedError:
                raise ControlError(
                    f"swarmd is not running (stale socket at {self.path})", EXIT_NOT_RUNNING
                ) from None
            except TimeoutError:
                raise ControlError(
                    f"swarmd did not answer within {self.timeout:g} s ({self.path})",
                    EXIT_DAEMON_ERROR,
                ) from None
            except OSError as exc:
                code = EXIT_NOT_RUNNING if exc.errno in (errno.ENOTSOCK, errno.ENOENT) else 1
                raise ControlError(f"cannot reach swarmd at {self.path}: {exc}", code) from None
            except http.client.HTTPException as exc:
                raise ControlError(
                    f"bad answer from swarmd at {self.path}: {exc!r}", EXIT_DAEMON_ERROR
                ) from None
        finally:
            conn.close()
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = None
        if resp.status >= 400:
            msg = None
            if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
                msg = doc["error"].get("message")
            raise ControlError(
                f"swarmd: {msg or raw[:200].decode(errors='replace') or resp.reason}"
                f" (HTTP {resp.status})",
                EXIT_DAEMON_ERROR,
                resp.status,
            )
        if doc is None:
            raise ControlError("swarmd sent a reply that is not JSON", EXIT_DAEMON_ERROR)
        return doc

    def get(self, url: str) -> Any:
        return self.request("GET", url)

    def post(self, url: str, body: Any = None) -> Any:
        return self.request("POST", url, body if body is not None else {})

    # The endpoints, one method each.
    # The documents are swarmd.core.views' TypedDicts as the daemon sent them;
    # another version may omit keys, so readers use .get().
    def status(self) -> StatusDoc:
        return cast("StatusDoc", dict(self.get("/v1/status")))

    def nodes(self) -> NodesDoc:
        return cast("NodesDoc", dict(self.get("/v1/nodes")))

    def models(self) -> ModelsDoc:
        return cast("ModelsDoc", dict(self.get("/v1/models")))

    def join(self) -> dict[str, Any]:
        return dict(self.get("/v1/join"))

    def leave(self) -> dict[str, Any]:
        return dict(self.post("/v1/leave"))

    def drain(self, on: bool) -> dict[str, Any]:
        return dict(self.post("/v1/drain", {"on": on}))
