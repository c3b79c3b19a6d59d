#!/usr/bin/env bash
# FSDP and DeepSpeed ZeRO-2/3 on a machine with 2+ GPUs, with the shipped configs, on a tiny BERT: each engine wraps
# the model on every rank, sharding engines hold ~1/N of the parameters, only the unfrozen parameters change and
# the saved model loads in pipeline(). CI has no GPU, so run it there by hand:
#   pip install -e ".[test]" && bash scripts/gpu_check.sh
#   ENGINES="fsdp" NUM_GPUS=2 bash scripts/gpu_check.sh      # one engine, 2 GPUs
# Exits 0 when every engine passes, 1 when a check fails (one line each), 2 without 2 GPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

NUM_GPUS=${NUM_GPUS:-$(python -c "import torch; print(torch.cuda.device_count())")}
if [ "$NUM_GPUS" -lt 2 ]; then
    echo "gpu_check: needs 2 or more GPUs, found $NUM_GPUS" >&2
    exit 2
fi
WORK=$(mktemp -d)
python scripts/gpu_check.py make "$WORK"

failed=0
for engine in ${ENGINES:-fsdp deepspeed_zero2 deepspeed_zero3}; do
    # fp32 on the tiny model: the frozen-parameter check compares exact values
    if ! accelerate launch --config_file "accelerate_configs/$engine.yaml" --num_processes "$NUM_GPUS" \
        --mixed_precision no recipes/bert_cls.py \
        --model_name_or_path "$WORK/model" --train_file "$WORK/data/train.csv" \
        --validation_file "$WORK/data/validation.csv" --test_file "$WORK/data/test.csv" \
        --output_dir "$WORK/$engine" --unfreeze-last 2 --max_steps 4 --per_device_train_batch_size 4 \
        --save_strategy no --eval_strategy no --logging_steps 1 >"$WORK/$engine.log" 2>&1; then
        echo "$engine: the run failed; last lines of $WORK/$engine.log:"
        tail -n 5 "$WORK/$engine.log"
        failed=1
        continue
    fi
    python scripts/gpu_check.py verify "$WORK" "$engine" || failed=1
done
echo "gpu_check: logs and outputs in $WORK"
exit "$failed"
