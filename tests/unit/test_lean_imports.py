"""swarmd.runtime.lean_imports: placeholders load on first use, blocked CLI stays out.

Each case runs in a fresh interpreter: the finder changes ``sys.meta_path``
and ``sys.modules`` for the whole process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_libp2p_import_leaves_deferred_modules_unloaded() -> None:
    got = _run("""
        import sys
        from swarmd.runtime import lean_imports
        lean_imports.install()
        import libp2p, swarmd.runtime.assembly
        import requests  # a second import must not load it (LazyLoader would)
        print(sorted(m for m in ("urllib3", "rich", "click", "pygments", *lean_imports.DEFERRED)
                     if type(sys.modules.get(m)).__name__ == "module"))
        print(type(sys.modules["requests"]).__name__, type(sys.modules["httpx"]).__name__)
    """)
    assert got.splitlines() == ["[]", "_DeferredModule _DeferredModule"]


def test_placeholder_loads_on_first_attribute_and_submodules_work() -> None:
    got = _run("""
        import sys
        from swarmd.runtime import lean_imports
        lean_imports.install()
        import libp2p.security.tls.autotls.acme as acme
        get = acme.requests.get                     # through the placeholder
        import requests.adapters                    # a submodule, after loading
        print(get.__module__, type(sys.modules["requests"]).__name__,
              requests.adapters.HTTPAdapter.__name__, acme.requests.adapters is requests.adapters)
        import httpx
        print(httpx.Client.__name__, "httpx._main" in sys.modules, "rich" in sys.modules)
    """)
    assert got.splitlines() == ["requests.api module HTTPAdapter True",
                                "Client False False"]


def test_blocked_module_raises_import_error_and_install_is_idempotent() -> None:
    got = _run("""
        import sys
        from swarmd.runtime import lean_imports
        lean_imports.install(); lean_imports.install()
        print(sum(isinstance(f, lean_imports._LeanFinder) for f in sys.meta_path))
        try:
            import httpx._main
        except ImportError as exc:
            print("ImportError", "lean_imports" in str(exc))
    """)
    assert got.splitlines() == ["1", "ImportError True"]
