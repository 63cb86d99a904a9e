#!/usr/bin/env bash
# One device call trains the 16x16-latent emoji-64 generator (HART) and its VAR-only twin with the
# same recipe and steps, from the package of scripts/device_package.py, and brings their weights
# back. Made here first:
#   python scripts/device_package.py build --recipe configs/emoji-64-generator-latent16.yaml --out .device-package
# then, with candidates/ moved out of the working tree (the call carries 64 MiB; `build` says how
# much it would), as the device tool's command (carry: .device-package):
#   OUT=$OUT bash scripts/device_train_emoji64.sh
# and here, with the files that came back in FILES:
#   python scripts/device_package.py assemble --returned FILES/hart --tokenizer TOKENIZER --out runs/emoji-64-latent16-gpu/hart
# What comes back (the device returns at most 8 files): device.log, train.log and, per run,
# {hart,var}/transformer.safetensors, head.safetensors (fp16, configs inside) and metrics.csv.
#
# Environment: STEPS (3000, the shipped recipe's), BATCH (32, likewise), WORK (/tmp/emoji64),
# RECIPE (configs/emoji-64-generator-latent16.yaml), TIME_LIMIT (seconds per run, 200), DEVICE
# (cuda), WORKERS (8 data loader processes) and WARMUP (200 steps). A dry run here, end to end on the CPU:
#   DEVICE=cpu WORKERS=0 STEPS=4 WARMUP=0 BATCH=4 OUT=/tmp/device-out bash scripts/device_train_emoji64.sh
set -euo pipefail
: "${OUT:?set OUT to the folder whose files come back}"
STEPS=${STEPS:-3000}
BATCH=${BATCH:-32}
WORK=${WORK:-/tmp/emoji64}
RECIPE=${RECIPE:-configs/emoji-64-generator-latent16.yaml}
TIME_LIMIT=${TIME_LIMIT:-200}
DEVICE=${DEVICE:-cuda}
WORKERS=${WORKERS:-8}
WARMUP=${WARMUP:-200}
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
started=$(date +%s)
stamp() { echo "[$(($(date +%s) - started)) s] $*" | tee -a "$OUT/device.log"; }

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$OUT/device.log" || true
# A second call on the same (warm) machine reuses what the first one finished.
if [ ! -f "$WORK/.unpacked" ]; then
  python3 scripts/device_package.py unpack --package .device-package --out "$WORK" | tee -a "$OUT/device.log"
  touch "$WORK/.unpacked"
fi
stamp unpacked

common=(
  --set "data.train.root=$WORK/data"
  --set "tokenizer_from=$WORK/tokenizer"
  --set "run.device=$DEVICE"
  --set "data.num_workers=$WORKERS"
  --set "data.batch_size=$BATCH"
  --set "optim.max_steps=$STEPS"
  --set "optim.warmup_steps=$WARMUP"
  # The packed MiniLM, as an ordinary transformers folder: the features are made and checked with it.
  --set text_encoder.kind=transformers
  --set "text_encoder.model_path=$WORK/text_encoder"
)
if [ ! -f "$WORK/text-features.safetensors" ]; then
  python3 -m openhart train text-features --config "$RECIPE" "${common[@]}" \
    --out "$WORK/text-features.safetensors" 2>&1 | tail -n 3 | tee -a "$OUT/device.log"
fi
stamp text features

for variant in hart var; do
  extra=()
  if [ "$variant" = var ]; then extra=(--set loss.diffusion_weight=0); fi
  python3 -m openhart train generator --config "$RECIPE" "${common[@]}" "${extra[@]}" \
    --set "text_features=$WORK/text-features.safetensors" --set run.checkpoint_every=1000 \
    --set run.sample_every=0 --out "$WORK/run-$variant" --time-limit "$TIME_LIMIT" \
    >> "$OUT/train.log" 2>&1 || stamp "$variant run failed (see train.log)"
  stamp "$variant trained"
  # A run stopped by its time limit has no final/: its newest checkpoint's model is the same kind of folder.
  final="$WORK/run-$variant/final"
  if [ ! -d "$final" ]; then
    final=$(ls -d "$WORK/run-$variant"/checkpoints/step-*/model 2>/dev/null | sort | tail -n 1 || true)
  fi
  if [ -n "$final" ] && [ -d "$final" ]; then
    stamp "$variant: exporting $final"
    python3 scripts/device_package.py export --pipeline "$final" --out "$OUT/$variant"
    cp "$WORK/run-$variant/metrics.csv" "$OUT/$variant/metrics.csv"
  fi
done
stamp done
