"""Source specs: the text a user gives ``swarmctl pull`` (pure, no I/O).

Grammar (protocol/models.md, "Source specs")::

    hf:ORG/REPO[:FILE-OR-QUANT-PATTERN][@REVISION]
    ollama:[NAMESPACE/]NAME[:TAG]
    http://...  |  https://...
    /absolute/path  |  ./relative/path  |  ../path  |  ~/path
    NAME                      (a model the store or the swarm already holds)

:func:`parse_spec` returns one of the frozen dataclasses below or raises
:class:`SpecError` with a message that says what is wrong and what was
expected.  :func:`format_spec` is its inverse for the canonical form stored
in manifests (``source``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit


class SpecError(ValueError):
    """A source spec that does not parse; the message names the problem."""


@dataclass(frozen=True)
class HfSpec:
    repo: str  # ORG/REPO
    pattern: str | None = None  # a file name, a glob, or a quantization such as Q4_K_M
    revision: str | None = None  # branch, tag or commit; None = main


@dataclass(frozen=True)
class OllamaSpec:
    name: str  # NAMESPACE/NAME; "library/" is added when none is given
    tag: str = "latest"


@dataclass(frozen=True)
class UrlSpec:
    url: str


@dataclass(frozen=True)
class PathSpec:
    path: str


@dataclass(frozen=True)
class NameSpec:
    name: str


SourceSpec = HfSpec | OllamaSpec | UrlSpec | PathSpec | NameSpec

_HF_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
_HF_REPO = re.compile(rf"^{_HF_PART}/{_HF_PART}$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
_OLLAMA_PART = r"[a-z0-9](?:[a-z0-9._-]{0,78}[a-z0-9])?"
_OLLAMA_NAME = re.compile(rf"^(?:{_OLLAMA_PART}/)?{_OLLAMA_PART}$")
_OLLAMA_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
#: A model name in the store: what engines and clients call the model.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+-]{0,127}$")
MAX_SPEC = 2048


def valid_name(name: str) -> bool:
    """A usable model name: 1-128 of ``A-Za-z0-9._:/+-``, no ``..``, no ``//``."""
    return bool(MODEL_NAME.match(name)) and ".." not in name and "//" not in name


def parse_spec(text: str) -> SourceSpec:
    """Parse a source spec; :class:`SpecError` says what is wrong."""
    if not isinstance(text, str):
        raise SpecError("a source spec is a string")
    s = text.strip()
    if not s:
        raise SpecError("empty source spec")
    if len(s) > MAX_SPEC:
        raise SpecError(f"source spec longer than {MAX_SPEC} characters")
    if any(ord(c) < 32 for c in s):
        raise SpecError("source spec contains control characters")
    if s.startswith("hf:"):
        return _parse_hf(s[3:])
    if s.startswith("ollama:"):
        return _parse_ollama(s[7:])
    if s.startswith(("http://", "https://")):
        parts = urlsplit(s)
        if not parts.hostname:
            raise SpecError(f"{s!r}: URL has no host")
        if not parts.path or parts.path.endswith("/"):
            raise SpecError(f"{s!r}: URL must name a file, not a directory")
        return UrlSpec(s)
    if s.startswith(("/", "./", "../", "~")):
        return PathSpec(s)
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", s)
    if scheme:
        raise SpecError(
            f"unknown source scheme {scheme.group(1)!r} (known: hf:, ollama:, http://, https://, /path)"
        )
    if valid_name(s):
        return NameSpec(s)
    raise SpecError(
        f"{s!r} is not a source spec (hf:ORG/REPO[:PATTERN][@REV], ollama:NAME[:TAG], "
        "http(s)://URL, /path) nor a model name"
    )


def _parse_hf(rest: str) -> HfSpec:
    revision = None
    if "@" in rest:
        rest, revision = rest.rsplit("@", 1)
        if not _REVISION.match(revision) or ".." in revision:
            raise SpecError(f"hf: bad revision {revision!r} (a branch, tag or commit)")
    repo, sep, pattern = rest.partition(":")
    if not _HF_REPO.match(repo) or ".." in repo or "--" in repo:
        raise SpecError(f"hf: {repo!r} is not ORG/REPO (letters, digits, . _ -)")
    if sep and not pattern:
        raise SpecError("hf: empty file or quantization pattern after ':'")
    if pattern and (pattern.startswith("/") or ".." in pattern.split("/") or "\\" in pattern):
        raise SpecError(f"hf: pattern {pattern!r} must be a path inside the repo")
    return HfSpec(repo=repo, pattern=pattern or None, revision=revision)


def _parse_ollama(rest: str) -> OllamaSpec:
    name, sep, tag = rest.partition(":")
    if not _OLLAMA_NAME.match(name):
        raise SpecError(f"ollama: {name!r} is not [NAMESPACE/]NAME (lower-case letters, digits, . _ -)")
    if sep and not _OLLAMA_TAG.match(tag):
        raise SpecError(f"ollama: bad tag {tag!r}")
    if "/" not in name:
        name = f"library/{name}"
    return OllamaSpec(name=name, tag=tag or "latest")


def format_spec(spec: SourceSpec) -> str:
    """The canonical text of a spec (what a manifest records as ``source``)."""
    if isinstance(spec, HfSpec):
        out = f"hf:{spec.repo}"
        if spec.pattern:
            out += f":{spec.pattern}"
        if spec.revision:
            out += f"@{spec.revision}"
        return out
    if isinstance(spec, OllamaSpec):
        return f"ollama:{spec.name}:{spec.tag}"
    if isinstance(spec, UrlSpec):
        return spec.url
    if isinstance(spec, PathSpec):
        return spec.path
    return spec.name
