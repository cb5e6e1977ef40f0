#!/usr/bin/env bash
# Builds llama.cpp's llama-server, llama-bench and llama-quantize natively (cmake, GGML_NATIVE: the build a user compiles for
# their machine) from the llama.cpp source node-llama-cpp ships (its git bundle, fetched by
# scripts/fetch_data into data/llamacpp), into data/llamacpp/build/bin. For benchmarks only
# (bench/serve.sh); not part of the tests. Idempotent. usage: bench/llama_server.sh
set -euo pipefail
cd "$(dirname "$0")/.."
LC=data/llamacpp
bundle=$LC/node_modules/node-llama-cpp/llama/gitRelease.bundle
[ -f "$bundle" ] || { echo "llama_server.sh: $bundle missing (run scripts/fetch_data)"; exit 1; }
if [ ! -d $LC/src/.git ]; then
  rm -rf $LC/src
  git clone -q "$bundle" $LC/src
fi
echo "llama.cpp $(git -C $LC/src describe --tags --always 2>/dev/null || true)"
if [ ! -x $LC/build/bin/llama-server ] || [ ! -x $LC/build/bin/llama-quantize ]; then
  cmake -S $LC/src -B $LC/build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF > $LC/build.log 2>&1 \
    || { tail -20 $LC/build.log; exit 1; }
  cmake --build $LC/build --target llama-server llama-bench llama-quantize >> $LC/build.log 2>&1 || { tail -30 $LC/build.log; exit 1; }
fi
ls -la $LC/build/bin/llama-server
