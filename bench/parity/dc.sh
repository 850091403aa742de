#!/usr/bin/env bash
# Parity run for DC (main.py --method DC: noise init, lr_img 0.1, no augmentation) against ddbench, same budget and data.
# Usage: bench/parity/dc.sh OFFICIAL_CHECKOUT OUT [DATASET] [IPC] [ITERATIONS] [SEEDS] (run.sh)
exec bash "$(dirname "$0")/run.sh" dc "$@"
