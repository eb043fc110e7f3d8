# Sourced by the versus-llama.cpp scripts: `llama_tool NAME` prints the path of llama.cpp's tool
# NAME (llama-bench, llama-batched-bench, llama-server), building it first when it is missing:
# CUDA, sm_90, from LLAMA_SRC (default .llama/llamacpp-src.tar.gz: the reference source of
# ../shared/reference/llama.cpp-src, copied there because the GPU machine sees only the checkout)
# into LLAMA_BUILD (default /tmp/llama-build); about 5 minutes on 16 cores.
llama_tool() {
  local name=$1 build=${LLAMA_BUILD:-/tmp/llama-build} src=${LLAMA_SRC:-.llama/llamacpp-src.tar.gz}
  local server=OFF
  [ "$name" = llama-server ] && server=ON
  if [ ! -x "$build/llama.cpp/build/bin/$name" ]; then
    echo "building llama.cpp's $name (CUDA, sm_90) in $build ..." >&2
    mkdir -p "$build" && { [ -d "$build/llama.cpp" ] || tar xzf "$src" -C "$build"; }
    (cd "$build/llama.cpp" &&
      cmake -B build -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=$server -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF \
        -DCMAKE_BUILD_TYPE=Release >/dev/null &&
      cmake --build build -j"$(nproc)" --target "$name" >/dev/null) || return 1
  fi
  echo "$build/llama.cpp/build/bin/$name"
}
