#!/usr/bin/env bash
# The device check: run in one go on a machine with an NVIDIA GPU (under 8 minutes on one card).
#
#     bash bench/gpu_check.sh [OUT_DIR]        # writes OUT_DIR/gpu_check.md (default: $OUT or .)
#
# What it measures (bench/step_cost.py; random-init full-size architectures, no downloads):
# 1. sam-vit-b at 1024 px, batch 2: per method (full, decoder, parser, lora, cobot-lora,
#    adaptformer) training step time, step memory (max_memory_allocated) and the planner's estimate
#    for the same step, merged inference / base; then the same with activation checkpointing.
# 2. sam-vit-h, parser and lora at batch 1 under a 24 GiB cap (a 24 GB card on a larger one).
# 3. Activation checkpointing's time cost on sam-vit-b at batch 2 (parser, lora; paired, one process).
# 4. The planner against measured step memory (bench/planner_check.py): SAM and CLIP cases, fp32 and
#    bf16 autocast, with and without checkpointing.
# 5. Click latency of the app's predictor where app.placement puts it (the GPU) against the CPU.
# 6. The planner's plans for the common cards (train --plan), to read beside the measured peaks.
# 7. The new backbones' step cost: sam2.1-hiera-base-plus and mobile-sam at batch 2 (after item 2).
# 0. First, the fast path (bench/fast_path.py, bf16 autocast): sam-vit-b LoRA and PARSER steps with
#    eager against fused attention (the folded SDPA form on the GPU), an uncached click embedding,
#    decoder-only steps cached against uncached; then the steps again under --compile. FAST_ONLY=1
#    stops after it (about 6 minutes).
# Copy the tables into docs/benchmarks.md with the machine's name.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-.}}"
mkdir -p "$OUT_DIR"
REPORT="$OUT_DIR/gpu_check.md"
PY="${PYTHON:-.venv/bin/python}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/GPU: /' > "$REPORT"
echo >> "$REPORT"
run() { echo "## $1" >> "$REPORT"; echo >> "$REPORT"; shift; "$PY" bench/step_cost.py --device cuda --quiet "$@" >> "$REPORT"; }
fast() { echo "## $1" >> "$REPORT"; echo >> "$REPORT"; shift; "$PY" bench/fast_path.py --device cuda --precision bf16 "$@" >> "$REPORT"; echo >> "$REPORT"; }
fast "Fast path: fused vs eager attention, cached vs uncached embeddings, sam-vit-b, bf16" --parts step,click,cache --steps 5
fast "Fast path under torch.compile: fused vs eager steps, sam-vit-b, bf16" --parts step --steps 5 --compile
if [ "${FAST_ONLY:-0}" = 1 ]; then cat "$REPORT"; exit 0; fi
METHODS=full,decoder,parser,lora,cobot-lora,adaptformer
run "sam-vit-b, batch 2" --backbone sam-vit-b --batch 2 --steps 10 --warmup 3 --infer-rounds 5 --methods "$METHODS"
run "sam-vit-b, batch 2, activation checkpointing" --backbone sam-vit-b --batch 2 --steps 10 --warmup 3 \
    --infer-rounds 3 --methods "$METHODS" --checkpointing
run "sam-vit-h, batch 1, capped at 24 GiB" --backbone sam-vit-h --batch 1 --steps 5 --warmup 2 --infer-rounds 3 \
    --methods parser,lora --memory-cap 24
run "sam2.1-hiera-base-plus, batch 2" --backbone sam2.1-hiera-base-plus --batch 2 --steps 8 --warmup 2 \
    --infer-rounds 3 --methods "$METHODS,cobot-adaptformer"
run "mobile-sam, batch 2" --backbone mobile-sam --batch 2 --steps 8 --warmup 2 --infer-rounds 3 --methods "$METHODS"
section() { echo "## $1" >> "$REPORT"; echo >> "$REPORT"; }
section "Activation checkpointing: step time ratio, sam-vit-b, batch 2"
"$PY" bench/step_cost.py --device cuda --quiet --backbone sam-vit-b --batch 2 --steps 8 --warmup 2 \
    --checkpointing-cost --methods parser,lora >> "$REPORT"
CASES=sam-vit-b:parser:2,sam-vit-b:parser:2:ckpt,sam-vit-b:lora:2,sam-vit-b:lora:2:ckpt,sam-vit-b:full:2
CASES=$CASES,sam-vit-b:decoder:2,sam-vit-h:lora:1:ckpt,clip-vit-b-16:hclip:32,clip-vit-b-16:hclip:32:ckpt
CASES=$CASES,clip-vit-b-16:lora-clip:32,clip-vit-b-16:full:32
for precision in fp32 bf16; do
  section "The planner against measured step memory, $precision"
  "$PY" bench/planner_check.py --device cuda --precision "$precision" --cases "$CASES" >> "$REPORT"
  echo >> "$REPORT"
done
section "Click latency (app.placement's device against the CPU), sam-vit-b"
"$PY" bench/click_latency.py --backbone sam-vit-b --pairs 5 >> "$REPORT"
echo >> "$REPORT"
{
  echo "## The planner's plans"
  echo
  for card in 16GB 24GB 80GB; do
    for spec in "sam-vit-b full 8" "sam-vit-b parser 8" "sam-vit-h parser 4" "sam-vit-h lora 4" "clip-vit-b-16 hclip 8"; do
      set -- $spec
      echo "- $("$PY" -m adapt train --plan --backbone "$1" --method "$2" --batch-size "$3" --memory-budget "$card" 2>/dev/null || true)"
    done
  done
} >> "$REPORT"
cat "$REPORT"
