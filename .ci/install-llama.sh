#!/usr/bin/env bash
# Install a real llama.cpp engine into .venv for the `llama` test tier (idempotent).
#
# llama-cpp-python ships only an sdist on PyPI, so pip compiles llama.cpp
# (ggml, llama, common) from source: about 6 min on 2 cores, under 5 min
# with the multimodal library (libmtmd, unused by swarmd's tests) switched
# off below. pip stores the built wheel in its cache (~/.cache/pip/wheels),
# so later runs on the same machine install in seconds. Note: that cache is
# keyed by the sdist, not by CMAKE_ARGS; pass --no-cache-dir to rebuild.
#
# Needs a C/C++ compiler (gcc/g++ and make: Debian's build-essential, which
# this script apt-installs when run as root without one).
# CMake >= 3.21 is taken from the system when present, else scikit-build-core
# fetches the `cmake` (and `ninja`) wheels from the package index itself.
#
#   bash .ci/install-llama.sh          install if `llama_cpp.server` is not importable
#   LLAMA_JOBS=4 bash .ci/install-llama.sh   more compile jobs (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
LLAMA_CPP_PYTHON_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
if [ ! -x "$PY" ]; then
  echo "install-llama: $PY not found; run .ci/setup first" >&2
  exit 1
fi

# `llama_cpp.server.app` pulls in the server extras (fastapi, uvicorn,
# sse-starlette, ...) and loads libllama, so a broken install is not skipped.
check='import llama_cpp, llama_cpp.server.app, gguf; print(llama_cpp.__version__)'
if have=$("$PY" -c "$check" 2>/dev/null); then
  echo "install-llama: llama-cpp-python $have and gguf already installed"
  exit 0
fi

if ! command -v g++ >/dev/null 2>&1 && ! command -v c++ >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install-llama: no C++ compiler; installing build-essential"
    apt-get update -qq && apt-get install -y -qq build-essential >/dev/null
  else
    echo "install-llama: no C++ compiler found; install build-essential (gcc, g++, make)" >&2
    exit 1
  fi
fi

export CMAKE_BUILD_PARALLEL_LEVEL=${LLAMA_JOBS:-${CMAKE_BUILD_PARALLEL_LEVEL:-2}}
# LLAVA_BUILD=OFF skips libmtmd (multimodal; llama_cpp imports it lazily).
# llama.cpp's tests/examples/tools are already off when it is built as a
# subdirectory; the flags below only make that explicit.
export CMAKE_ARGS="${CMAKE_ARGS:-} -DLLAVA_BUILD=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF"

echo "install-llama: installing llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION and gguf" \
  "(a source build takes minutes unless pip has the wheel cached)"
start=$(date +%s)
"$PY" -m pip install -q \
  "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION" "gguf>=0.10"
have=$("$PY" -c "$check")
echo "install-llama: llama-cpp-python $have ready in $(( $(date +%s) - start )) s"
