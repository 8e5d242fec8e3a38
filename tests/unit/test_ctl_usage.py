"""swarmctl usage: durations, the /v1/usage query and document, JSON/CSV/table output."""

from __future__ import annotations

import argparse
import csv
import http.server
import io
import json
import shutil
import socketserver
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

import pytest

from swarmd.control.client import ControlClient, ControlError
from swarmd.ctl import usage as ctl_usage
from swarmd.usage import report

ROWS = [
    {"model": "gpt-4o-mini", "requests": 1200, "prompt_tokens": 1_500_000,
     "completion_tokens": 300_000, "cost_usd": 0.405, "errors": 3},
    {"model": "llama-3-8b", "requests": 40, "prompt_tokens": 9000, "completion_tokens": 1000,
     "cost_usd": 0.0, "errors": 0},
    {"model": "", "requests": 2, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0},
]


class FakeClient:
    """Answers ``get`` with a fixed document and remembers the URLs asked."""

    def __init__(self, doc: object) -> None:
        self.doc = doc
        self.urls: list[str] = []

    def get(self, url: str) -> object:
        self.urls.append(url)
        return self.doc


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--json", action="store_true")  # the common flag swarmctl's main adds
    ctl_usage.add_arguments(p)
    return p.parse_args(argv)


def call(doc: object, *argv: str) -> tuple[int, FakeClient]:
    client = FakeClient(doc)
    return ctl_usage.run(cast(ControlClient, client), parse(*argv)), client


def query(url: str) -> dict[str, str]:
    parts = urlsplit(url)
    assert parts.path == "/v1/usage"
    return dict(parse_qsl(parts.query))


# -- durations and the query ------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("2w", 1209600),
    ("1.5h", 5400), ("1d12h", 129600), (" 7D ", 604800),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert report.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "d", "7y", "-1d", "7 d", "1d-2h", "0s", "0d0h"])
def test_parse_duration_rejects_with_a_clear_message(text: str) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        report.parse_duration(text)


def test_format_duration_round_trips() -> None:
    for text in ("90s", "30m", "12h", "7d", "36h"):
        assert report.format_duration(report.parse_duration(text)) == text
    assert report.format_duration(report.parse_duration("2w")) == "14d"
    assert report.format_duration(1.5) == "1.5s"


def test_usage_url_and_server_side_parse() -> None:
    url = report.usage_url("project", 604800.0)
    assert query(url) == {"by": "project", "since": "604800"}
    assert report.parse_usage_query(query(url)) == ("project", 604800.0)
    assert report.parse_usage_query({}) == ("model", 604800.0)
    for bad in ({"by": "route"}, {"since": "x"}, {"since": "-5"}, {"since": "nan"},
                {"since": "0"}):
        with pytest.raises(ValueError):
            report.parse_usage_query(bad)


def test_usage_doc_shape() -> None:
    doc = report.usage_doc("model", 60.0, ROWS[:1])
    assert doc == {"by": "model", "since": 60.0, "rows": [ROWS[0]], "partial": False}
    assert doc["rows"][0] is not ROWS[0]
    doc = report.usage_doc("model", 60.0, [], partial=True, note="node gamma unreachable")
    assert doc["partial"] is True and doc["note"] == "node gamma unreachable"
    with pytest.raises(ValueError):
        report.check_doc({"rows": "nope"})
    with pytest.raises(ValueError):
        report.check_doc([1, 2])


# -- the command ------------------------------------------------------------------------


def test_json_is_the_list_of_rows(capsys: pytest.CaptureFixture[str]) -> None:
    doc = report.usage_doc("model", 604800.0, ROWS)
    code, client = call(doc, "--json")
    assert code == 0
    assert query(client.urls[0]) == {"by": "model", "since": "604800"}
    out = json.loads(capsys.readouterr().out)
    assert out == ROWS
    for row in out:
        assert {"model", *report.FIELDS} <= set(row)


def test_by_and_since_reach_the_query(capsys: pytest.CaptureFixture[str]) -> None:
    for by in report.BY:
        code, client = call(report.usage_doc(by, 1800.0, []), "--by", by, "--since", "30m",
                            "--json")
        assert code == 0 and query(client.urls[0]) == {"by": by, "since": "1800"}
        assert json.loads(capsys.readouterr().out) == []


def test_csv_has_a_header_and_one_line_per_row(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = call(report.usage_doc("model", 604800.0, ROWS), "--csv")
    assert code == 0
    got = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert got == [
        ["model", "requests", "prompt_tokens", "completion_tokens", "cost_usd"],
        ["gpt-4o-mini", "1200", "1500000", "300000", "0.405"],
        ["llama-3-8b", "40", "9000", "1000", "0.0"],
        ["", "2", "0", "0", "0.0"],
    ]


def test_csv_quotes_awkward_values(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"user": 'ann, "the admin"', "requests": 1, "prompt_tokens": 2,
             "completion_tokens": 3, "cost_usd": 0.5}]
    assert call(report.usage_doc("user", 60.0, rows), "--by", "user", "--csv")[0] == 0
    got = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert got[1] == ['ann, "the admin"', "1", "2", "3", "0.5"]


def test_table_with_total(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = call(report.usage_doc("model", 604800.0, ROWS))
    assert code == 0
    out = capsys.readouterr().out
    assert "usage by model, last 7d" in out
    assert "MODEL" in out and "COST" in out
    line = next(x for x in out.splitlines() if "gpt-4o-mini" in x)
    assert "1,200" in line and "1,500,000" in line and "300,000" in line and "$0.405000" in line
    assert "(none)" in out
    total = next(x for x in out.splitlines() if x.lstrip().startswith("TOTAL"))
    assert "1,242" in total and "1,509,000" in total and "$0.405000" in total


def test_table_rows_units() -> None:
    rows = report.table_rows("key", [{"key": "k1", "requests": 3, "prompt_tokens": 10,
                                      "completion_tokens": 5, "cost_usd": 1234.5}])
    assert rows == [["k1", "3", "10", "5", "$1,234.50"]]
    assert report.usd(0) == "$0" and report.usd(None) == "-" and report.usd(0.00015) == "$0.000150"


def test_empty_and_partial(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = call(report.usage_doc("user", 7200.0, [], partial=True,
                                    note="2 of 3 nodes answered"), "--by", "user",
                   "--since", "2h")
    assert code == 0
    cap = capsys.readouterr()
    assert cap.out.strip() == "no usage in the last 2h"
    assert "partial answer: 2 of 3 nodes answered" in cap.err
    # with --json the note stays off stdout
    code, _ = call(report.usage_doc("user", 7200.0, ROWS[:1], partial=True), "--json")
    cap = capsys.readouterr()
    assert json.loads(cap.out) == ROWS[:1] and "partial answer" in cap.err


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, client = call(report.usage_doc("model", 1.0, []), "--json", "--csv")
    assert code == 2 and client.urls == [] and "not both" in capsys.readouterr().err
    code, _ = call({"by": "model"}, "--json")
    assert code == 1 and "no list of rows" in capsys.readouterr().err
    for argv in (["--since", "7y"], ["--by", "route"]):
        with pytest.raises(SystemExit) as ei:
            parse(*argv)
        assert ei.value.code == 2
    assert "bad duration '7y'" in capsys.readouterr().err
    assert parse().by == "model" and parse().since == 604800.0 and parse().csv is False


# -- through the real control client over a unix socket -----------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        _Handler.seen.append(self.path)
        q = dict(parse_qsl(urlsplit(self.path).query))
        try:
            by, since = report.parse_usage_query(q)
            status, body = 200, dict(report.usage_doc(by, since, [
                {by: "x", "requests": 1, "prompt_tokens": 2, "completion_tokens": 3,
                 "cost_usd": 0.25}]))
        except ValueError as exc:
            status, body = 400, {"error": {"message": str(exc)}}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def address_string(self) -> str:
        return "unix"

    def log_message(self, *args: Any) -> None:
        pass


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def socket_path() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="swu", dir="/tmp"))
    path = d / "swarmd.sock"
    server = _UnixHTTPServer(str(path), _Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(d, ignore_errors=True)


def test_real_client_round_trip(socket_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    client = ControlClient(socket_path, timeout=5)
    assert ctl_usage.run(client, parse("--by", "key", "--since", "2w", "--json")) == 0
    assert _Handler.seen[-1] == "/v1/usage?by=key&since=1209600"
    assert json.loads(capsys.readouterr().out) == [
        {"key": "x", "requests": 1, "prompt_tokens": 2, "completion_tokens": 3,
         "cost_usd": 0.25}]
    with pytest.raises(ControlError) as ei:  # the daemon refuses: swarmctl exits 1
        client.get("/v1/usage?by=route")
    assert ei.value.exit_code == 1 and "by must be one of" in ei.value.message
