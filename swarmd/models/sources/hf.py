"""Hugging Face Hub source: ``hf:ORG/REPO[:FILE-OR-QUANT-PATTERN][@REVISION]``.

Theory of operation
-------------------
Listing goes through ``huggingface_hub`` (``HfApi(endpoint=..., token=...)``:
``repo_info`` pins the revision to a commit, ``list_repo_tree`` gives every
file's size, LFS sha256 or git blob id).  The endpoint and token come from
``[models]`` config and are passed explicitly, so nothing here reads the
environment, and the token is ``False`` (none) when not configured rather
than whatever ``huggingface_hub`` would find on its own.  Bytes are then read
from ``hf_hub_url(...)`` (``/resolve/<commit>/<path>``, redirected to the CDN)
by :class:`~swarmd.models.sources.http.HttpRangeSource` into the store -- not
into the HF cache -- so they resume per chunk, are paced, and are verified
against the LFS sha256 (large files) or the git blob id (small ones).

File selection: an exact path; a glob (``*.gguf``); or a quantization name
(``Q4_K_M``) matched against the repo's GGUF file names (split GGUFs come
together).  With no pattern: the one GGUF if there is one (an error lists the
choices if several); else safetensors weights with their JSON/tokenizer
files; pickle weights (``.bin``) only with ``allow_pickle``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from swarmd.models.fetch import RangeSource, SourceError
from swarmd.models.meta import is_pickle_path
from swarmd.models.sources.base import Plan, RemoteFile, SourceSettings
from swarmd.models.sources.http import HttpRangeSource
from swarmd.models.spec import HfSpec, format_spec

SIDE_FILES = (".json", ".model", ".txt", ".tiktoken", ".jinja", ".py")
SKIP = ("README.md", ".gitattributes", "LICENSE", "USE_POLICY.md")


def _pick(files: dict[str, Any], spec: HfSpec, allow_pickle: bool) -> list[str]:
    paths = sorted(files)
    ggufs = [p for p in paths if p.lower().endswith(".gguf")]
    pat = spec.pattern
    if pat:
        if pat in files:
            return [pat]
        if any(c in pat for c in "*?["):
            hit = [p for p in paths if fnmatch.fnmatch(p, pat)]
        else:
            norm = pat.lower().replace("-", "_")
            hit = [p for p in ggufs if norm in p.lower().replace("-", "_")]
        if not hit:
            raise SourceError(f"hf:{spec.repo}: nothing matches {pat!r} (GGUF files: "
                              f"{', '.join(ggufs) or 'none'})")
        return hit
    main = [p for p in ggufs if "mmproj" not in p.lower()]
    if len(main) == 1:
        return main
    if main:
        raise SourceError(f"hf:{spec.repo} has {len(main)} GGUF files; name one, e.g. "
                          f"hf:{spec.repo}:{main[0]} (choices: {', '.join(main)})")
    weights = [p for p in paths if p.endswith(".safetensors")]
    if not weights:
        weights = [p for p in paths if is_pickle_path(p)]
        if weights and not allow_pickle:
            raise SourceError(f"hf:{spec.repo} has only pickle-based weights ({weights[0]}); "
                              "loading them can run code: set [models] allow_pickle = true")
    if not weights:
        raise SourceError(f"hf:{spec.repo} has no GGUF, safetensors or other weights")
    side = [p for p in paths if p.endswith(SIDE_FILES) and p not in SKIP and "/" not in p]
    return sorted(set(weights) | set(side))


def _opener(url: str, headers: dict[str, str], timeout: float) -> Callable[[], RangeSource]:
    return lambda: HttpRangeSource(url, headers, timeout)


def hf_plan(spec: HfSpec, settings: SourceSettings) -> Plan:
    from huggingface_hub import HfApi, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import build_hf_headers

    token: str | bool = settings.hf_token or False
    api = HfApi(endpoint=settings.hf_endpoint, token=token)
    try:
        info = api.repo_info(spec.repo, revision=spec.revision, token=token)
        commit = info.sha or spec.revision or "main"
        tree = {e.path: e for e in api.list_repo_tree(spec.repo, revision=commit,
                                                       recursive=True, token=token)
                if hasattr(e, "size")}
    except HfHubHTTPError as exc:
        raise SourceError(f"hf:{spec.repo}: {exc}") from None
    except Exception as exc:  # the Hub client's transport errors (httpx) are not OSError
        raise SourceError(f"hf:{spec.repo}: cannot reach {settings.hf_endpoint}: "
                          f"{type(exc).__name__}: {exc}") from None
    chosen = _pick(tree, spec, settings.allow_pickle)
    headers = build_hf_headers(token=token)
    out: list[RemoteFile] = []
    for path in chosen:
        entry: Any = tree[path]
        lfs = getattr(entry, "lfs", None)
        url = hf_hub_url(spec.repo, path, revision=commit, endpoint=settings.hf_endpoint)
        out.append(RemoteFile(
            path=path, size=int(entry.size), sha256=lfs.sha256 if lfs else None,
            identity=f"hf\n{spec.repo}\n{commit}\n{path}\n{entry.blob_id}",
            git_oid=None if lfs else entry.blob_id,
            open=_opener(url, headers, settings.timeout)))
    name = spec.repo
    if spec.pattern and not any(c in spec.pattern for c in "*?["):
        name += ":" + spec.pattern.rsplit("/", 1)[-1].removesuffix(".gguf")
    return Plan(name=name, source=format_spec(spec), files=out)
