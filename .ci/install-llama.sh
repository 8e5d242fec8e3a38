#!/usr/bin/env bash
# Install a real llama.cpp engine (llama-cpp-python's server) and gguf into
# .venv, for the integration tests.  Idempotent; pip caches the built wheel,
# so only the first run on a machine compiles llama.cpp (~6 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
if .venv/bin/python -c 'import llama_cpp.server, gguf' 2>/dev/null; then
  exit 0
fi
if ! command -v cmake >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq build-essential >/dev/null
  fi
fi
start=$(date +%s)
echo "installing llama-cpp-python[server] (builds llama.cpp from source on first use)..."
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
CMAKE_ARGS="${CMAKE_ARGS:--DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF}" \
  .venv/bin/pip install -q 'llama-cpp-python[server]==0.3.36' 'gguf>=0.10'
echo "llama-cpp-python ready in $(( $(date +%s) - start ))s"
