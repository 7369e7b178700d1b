#!/usr/bin/env bash
# Install llama-cpp-python, the llama.cpp runtime that tests/test_gguf_export.py and the GGUF benchmark load
# exported files in, from a wheel built once per machine and cached outside the repository.
#
#   bash scripts/tools/install_llama_cpp.sh [PYTHON]        (default .venv/bin/python; `make llama-cpp` runs it)
#
# PyPI has only an sdist, which compiles llama.cpp (about 140 C/C++ files): tens of minutes on two shared cores.
# The wheel is built CPU-only (no BLAS/GPU backends, no multimodal library, no tools), with -march=native for
# speed, so it only runs on CPUs like this one: the cache folder is keyed by the CPU's flags. The build goes into
# a temporary folder and is moved into the cache only when complete, so an interrupted build is never reused.
# HFPRUNE_WHEEL_CACHE overrides the cache folder (default ~/.cache/hfprune/wheels).
set -euo pipefail

PY=${1:-.venv/bin/python}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
CACHE=${HFPRUNE_WHEEL_CACHE:-$HOME/.cache/hfprune/wheels}
CPU=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | md5sum | cut -c1-8)
DIR="$CACHE/llama-cpp-python-$VERSION-$(uname -m)-$CPU"

wheel=$(ls "$DIR"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
  echo "building llama-cpp-python $VERSION (once; cached in $DIR)"
  mkdir -p "$CACHE"
  work=$(mktemp -d "$CACHE/.build-XXXXXX")
  trap 'rm -rf "$work"' EXIT
  start=$(date +%s)
  "$PY" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$work/sdist"
  CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
  CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF" \
    "$PY" -m pip wheel --quiet --no-deps "$work"/sdist/llama_cpp_python-"$VERSION".tar.gz -w "$work/wheel"
  mkdir -p "$DIR"
  mv "$work"/wheel/llama_cpp_python-*.whl "$DIR"/
  echo "built in $(( $(date +%s) - start )) s"
  wheel=$(ls "$DIR"/llama_cpp_python-"$VERSION"-*.whl | head -1)
fi
"$PY" -m pip install --quiet "$wheel"
"$PY" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'from $wheel')"
