"""TLS on the API port: ``[api] tls = "self-signed"`` on a real daemon."""

from __future__ import annotations

import hashlib
import json
import secrets
import ssl
import urllib.request
from pathlib import Path

import pytest

from swarmd.testing.daemon import Daemon

pytestmark = pytest.mark.integration


def test_self_signed_tls_serves_https_and_shows_its_fingerprint(tmp_path: Path) -> None:
    d = Daemon(tmp_path, "tls1", secret=secrets.token_hex(32), api_toml='tls = "self-signed"')
    d.start()
    try:
        doc = d.status()
        fp = doc["api_tls_fingerprint"]
        cert = (d.dir / "data" / "api-tls" / "cert.pem").read_text()
        der = ssl.PEM_cert_to_DER_cert(cert)
        assert fp == "sha256:" + hashlib.sha256(der).hexdigest()
        assert "API TLS certificate: sha256:" in d.ctl("status").stdout
        ctx = ssl.create_default_context(cadata=cert)  # pin the node's own certificate
        url = f"https://127.0.0.1:{d.api_port}/health"
        with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
            assert json.loads(r.read()) == {"status": "ok"}
        with pytest.raises(OSError):  # plain HTTP is not served on a TLS port
            urllib.request.urlopen(f"http://127.0.0.1:{d.api_port}/health", timeout=5).read()
        # the certificate survives a restart (same fingerprint)
        d.stop()
        d.start()
        assert d.status()["api_tls_fingerprint"] == fp
        assert oct((d.dir / "data" / "api-tls" / "key.pem").stat().st_mode & 0o777) == "0o600"
    finally:
        if d.alive():
            d.kill()
