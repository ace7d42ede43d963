#!/usr/bin/env bash
# Build the peers that benchmarks/text_generation.py times against our packages, into /tmp/peers:
#
#   $PEERS/llama.cpp       llama.cpp as vendored by the llama-cpp-python $LLAMA_CPP_PYTHON sdist on PyPI,
#                          CPU-only Release build of llama-bench, llama-quantize, llama-perplexity, llama-server
#   $PEERS/llamacpp-venv   the Python for its convert_hf_to_gguf.py: this machine's torch and transformers
#                          (--system-site-packages), the tree's own gguf-py, sentencepiece
#   $PEERS/genai           onnxruntime-genai $GENAI; its model builder uses this machine's torch/transformers
#   $PEERS/optimum         optimum-intel[openvino] in a venv of its own (no system site packages)
#
# Usage:  bash benchmarks/setup_peers.sh [llama.cpp] [llamacpp-venv] [genai] [optimum]   (no argument: all four)
# Then:   python benchmarks/text_generation.py --out out/bench-peers --no-torch \
#             --optimum-python /tmp/peers/optimum/bin/python \
#             --llama-cpp /tmp/peers/llama.cpp --llama-python /tmp/peers/llamacpp-venv/bin/python \
#             --genai-python /tmp/peers/genai/bin/python
#
# Needs: cmake, a C/C++ compiler, and a Python ($PYTHON, default `python`) with torch (CPU) and
# transformers, e.g. the one with `pip install -e '.[test]'` done. Idempotent: a step whose result
# is there and works is skipped, so rerun it after a failure. Everything heavy runs under nice.
# Time on a 2-core machine: llama.cpp 5-9 min (download ~1 min, the build 4-7.5 min), the two
# small venvs ~1 min together, optimum mostly its download (its own torch: ~6 GB with CUDA
# wheels from PyPI; CPU wheels if download.pytorch.org is reachable).
set -euo pipefail

PEERS=${PEERS:-/tmp/peers}
PYTHON=${PYTHON:-python}
JOBS=${JOBS:-2}
LLAMA_CPP_PYTHON=${LLAMA_CPP_PYTHON:-0.3.36}  # the llama-cpp-python release whose vendored llama.cpp we build
GENAI=${GENAI:-0.18.0}
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

say() { printf '\n== %s\n' "$*" >&2; }
works() { "$@" >/dev/null 2>&1; }

setup_llama_cpp() {
    local tree=$PEERS/llama.cpp bin=$PEERS/llama.cpp/build/bin
    if [ -x "$bin/llama-bench" ] && [ -x "$bin/llama-quantize" ] && [ -x "$bin/llama-perplexity" ] && [ -x "$bin/llama-server" ]; then
        say "llama.cpp: already built in $bin"; return
    fi
    if [ ! -f "$tree/convert_hf_to_gguf.py" ]; then
        local sdist=$PEERS/src/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz
        if [ ! -f "$sdist" ]; then
            say "llama.cpp: downloading the llama-cpp-python $LLAMA_CPP_PYTHON sdist"
            mkdir -p "$PEERS/src"
            "$PYTHON" -m pip download --no-binary :all: --no-deps "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$PEERS/src"
        fi
        say "llama.cpp: unpacking its vendor/llama.cpp into $tree"
        local unpack
        unpack=$(mktemp -d "$PEERS/src/unpack.XXXXXX")
        tar -xzf "$sdist" -C "$unpack" "llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp"
        rm -f "$unpack/llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp/.git"  # a submodule link to a repo not shipped
        rm -rf "$tree"
        mv "$unpack/llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp" "$tree"
        echo "llama-cpp-python $LLAMA_CPP_PYTHON's vendor/llama.cpp" > "$tree/VENDORED_FROM"  # no git: the build says "unknown"
        rm -rf "$unpack"
    fi
    say "llama.cpp: cmake build (CPU, Release, -j$JOBS; 4-8 min on 2 cores)"
    # LLAMA_CURL is gone from this tree (a deprecation warning only); OpenSSL is what it would use for downloads.
    nice -n 19 cmake -S "$tree" -B "$tree/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_CCACHE=OFF \
        -DBUILD_SHARED_LIBS=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF
    nice -n 19 cmake --build "$tree/build" -j"$JOBS" --target llama-bench llama-quantize llama-perplexity llama-server
    "$bin/llama-bench" --help >/dev/null
}

setup_llamacpp_venv() {
    local venv=$PEERS/llamacpp-venv
    [ -f "$PEERS/llama.cpp/gguf-py/pyproject.toml" ] || { echo "llamacpp-venv needs the llama.cpp tree first" >&2; exit 1; }
    if works "$venv/bin/python" -c "import torch, transformers, numpy, sentencepiece, gguf"; then
        say "llamacpp-venv: ready ($venv)"; return
    fi
    works "$PYTHON" -c "import torch, transformers" || {
        echo "$PYTHON lacks torch/transformers: install them (pip install torch --index-url $TORCH_CPU_INDEX transformers) or set PYTHON" >&2
        exit 1
    }
    say "llamacpp-venv: $venv (system torch/transformers, gguf-py from the tree, sentencepiece)"
    "$PYTHON" -m venv --system-site-packages "$venv"
    nice -n 19 "$venv/bin/pip" install -q -e "$PEERS/llama.cpp/gguf-py" sentencepiece
    "$venv/bin/python" -c "import torch, transformers, numpy, sentencepiece, gguf"
}

setup_genai() {
    local venv=$PEERS/genai
    # imported from / : importing it from inside its own package folder fails to find onnxruntime
    if (cd / && works "$venv/bin/python" -c "import onnxruntime_genai, onnxruntime_genai.models.builder, torch, transformers"); then
        say "genai: ready ($venv)"; return
    fi
    say "genai: $venv (onnxruntime-genai $GENAI; system torch/transformers/onnxruntime for its builder)"
    "$PYTHON" -m venv --system-site-packages "$venv"
    nice -n 19 "$venv/bin/pip" install -q "onnxruntime-genai==$GENAI"
    (cd / && "$venv/bin/python" -c "import onnxruntime_genai as og, onnxruntime_genai.models.builder, torch, transformers; print('onnxruntime-genai', og.__version__)")
}

setup_optimum() {
    local venv=$PEERS/optimum
    if [ -x "$venv/bin/optimum-cli" ] && works "$venv/bin/python" -c "import optimum.intel, openvino"; then
        say "optimum: ready ($venv)"; return
    fi
    say "optimum: $venv (optimum-intel[openvino], no system site packages)"
    "$PYTHON" -m venv "$venv"
    # CPU torch first when its index is reachable; otherwise pip takes PyPI's torch (CUDA wheels, ~6 GB)
    nice -n 19 "$venv/bin/pip" install -q --index-url "$TORCH_CPU_INDEX" torch 2>/dev/null \
        || echo "($TORCH_CPU_INDEX unreachable: optimum-intel will pull torch from PyPI)" >&2
    nice -n 19 "$venv/bin/pip" install -q "optimum-intel[openvino]"
    if works "$venv/bin/pip" show diffusers; then
        "$venv/bin/pip" uninstall -y -q diffusers  # pulled in, not needed, and conflicts with optimum's huggingface-hub
    fi
    "$venv/bin/python" -c "import optimum.intel, openvino; print('openvino', openvino.__version__)"
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(llama.cpp llamacpp-venv genai optimum)
mkdir -p "$PEERS"
for step in "${steps[@]}"; do
    case $step in
        llama.cpp) setup_llama_cpp ;;
        llamacpp-venv) setup_llamacpp_venv ;;
        genai) setup_genai ;;
        optimum) setup_optimum ;;
        *) echo "unknown step '$step' (llama.cpp, llamacpp-venv, genai, optimum)" >&2; exit 2 ;;
    esac
done
say "peers ready in $PEERS"
