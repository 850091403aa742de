#!/usr/bin/env bash
# Parity run for DM (main_DM.py --init real --lr_img 1) against ddbench, same budget and data.
# Usage: bench/parity/dm.sh OFFICIAL_CHECKOUT OUT [DATASET] [IPC] [ITERATIONS] [SEEDS] (run.sh)
exec bash "$(dirname "$0")/run.sh" dm "$@"
