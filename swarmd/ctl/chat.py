"""The chat prompt of ``swarmctl run MODEL`` on a terminal (as ``ollama run``).

Theory of operation
-------------------
After ``swarmctl run`` sees the model served, and when stdin and stdout are
a terminal and no deployment option was given (or ``--chat``), it reads lines
at a ``>>> `` prompt and sends each, with the conversation so far, to this
node's OpenAI API as ``POST /v1/chat/completions`` with ``"stream": true``,
printing the answer's tokens as they arrive.  The API's address is the one
this node gossips (``api`` in ``swarmctl status``; a listen-everywhere host
is reached on loopback); with TLS on the API port the certificate is pinned
to the fingerprint the control API reports.  A key, when the API asks for
one, comes from ``SWARMD_API_KEY``.

``/bye`` or end of input (Ctrl-D) quits; Ctrl-C during an answer stops it
(the connection is closed, so the swarm stops generating) and that turn is
dropped from the history; Ctrl-C at the prompt says how to quit.  Standard
library only, as the rest of swarmctl.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import ssl
import sys
from collections.abc import Callable
from typing import IO, Any

from swarmd.control.client import ControlClient, ControlError

PROMPT = ">>> "
HELP = "Type a message; /bye or Ctrl-D to quit; Ctrl-C stops an answer."


class ChatError(Exception):
    pass


def api_address(client: ControlClient) -> tuple[str, int, str | None]:
    """``(host, port, tls fingerprint or None)`` of this node's API port."""
    doc: Any = client.status()
    me = next((n for n in doc.get("nodes", []) if n.get("is_self")), None)
    api = me.get("api") if isinstance(me, dict) else None
    if not isinstance(api, str) or ":" not in api:
        raise ControlError("this node does not say where its API listens", 1)
    host, _, port = api.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    fp = doc.get("api_tls_fingerprint")
    return host, int(port), fp if isinstance(fp, str) and fp else None


class Api:
    """One connection per request to the node's API (plain HTTP or pinned TLS)."""

    def __init__(self, host: str, port: int, fingerprint: str | None = None,
                 key: str | None = None, timeout: float = 1800.0) -> None:
        self.host, self.port, self.fingerprint = host, port, fingerprint
        self.key = key if key is not None else os.environ.get("SWARMD_API_KEY", "")
        self.timeout = timeout

    def connect(self) -> http.client.HTTPConnection:
        if self.fingerprint is None:
            return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # pinned below instead
        conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                           context=ctx)
        conn.connect()
        sock = conn.sock
        der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        got = "sha256:" + hashlib.sha256(der or b"").hexdigest()
        if got != self.fingerprint:
            conn.close()
            raise ChatError(f"the API's certificate is {got}, not {self.fingerprint}")
        return conn

    def stream(self, model: str, messages: list[dict[str, str]],
               write: Callable[[str], None]) -> str:
        """Send the conversation; ``write`` each piece of the answer; the whole answer."""
        body = json.dumps({"model": model, "messages": messages, "stream": True}).encode()
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        conn = self.connect()
        try:
            conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
            resp = conn.getresponse()
            if resp.status >= 400:
                raise ChatError(_error_text(resp.status, resp.read()))
            parts: list[str] = []
            for raw in resp:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    doc = json.loads(data)
                except ValueError:
                    continue
                if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
                    raise ChatError(str(doc["error"].get("message") or doc["error"]))
                choices = (doc.get("choices") or []) if isinstance(doc, dict) else []
                for choice in choices if isinstance(choices, list) else []:
                    piece = (choice.get("delta") or {}).get("content")
                    if isinstance(piece, str) and piece:
                        parts.append(piece)
                        write(piece)
            return "".join(parts)
        finally:
            conn.close()  # on Ctrl-C too: the swarm stops generating


def _error_text(status: int, raw: bytes) -> str:
    try:
        doc = json.loads(raw)
        msg = doc["error"]["message"] if isinstance(doc.get("error"), dict) else doc["error"]
    except (ValueError, KeyError, TypeError):
        msg = raw[:300].decode("utf-8", "replace")
    return f"HTTP {status}: {msg}"


def repl(api: Api, model: str, stdin: IO[str] | None = None,
         stdout: IO[str] | None = None) -> int:
    """The prompt loop; returns the exit code (0)."""
    inp = stdin or sys.stdin
    out = stdout or sys.stdout
    history: list[dict[str, str]] = []

    def write(text: str) -> None:
        out.write(text)
        out.flush()

    write(f"chatting with {model} ({HELP})\n")
    while True:
        try:
            write(PROMPT)
            line = inp.readline() if inp is not sys.stdin else input()
            if inp is not sys.stdin and not line:
                raise EOFError
        except EOFError:
            write("\n")
            return 0
        except KeyboardInterrupt:
            write("\nUse Ctrl + d or /bye to exit.\n")
            continue
        text = line.rstrip("\n")
        if text.strip() == "/bye":
            return 0
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        try:
            answer = api.stream(model, history, write)
        except KeyboardInterrupt:
            history.pop()
            write("\n^C (answer stopped)\n")
            continue
        except (ChatError, OSError, http.client.HTTPException) as exc:
            history.pop()
            write(f"\nerror: {exc}\n")
            continue
        history.append({"role": "assistant", "content": answer})
        write("\n\n")


def chat(client: ControlClient, model: str) -> int:
    host, port, fp = api_address(client)
    return repl(Api(host, port, fp), model)
