#!/usr/bin/env bash
# Parity run for DSA (main.py --method DSA --init real) against ddbench, same budget and data.
# Usage: bench/parity/dsa.sh OFFICIAL_CHECKOUT OUT [DATASET] [IPC] [ITERATIONS] [SEEDS] (run.sh)
exec bash "$(dirname "$0")/run.sh" dsa "$@"
