"""Print the parity table (markdown) from the JSON files that parity.py writes.

Usage: python bench/parity/table.py bench/results/parity/*.json
"""

import json
import sys
from pathlib import Path

NAMES = {
    "fyi_dm": "DM + FYI",
    "fyi_dsa": "DSA + FYI",
    "datadam": "DataDAM (the code's BN network)",
    "datadam_paper_net": "DataDAM (the paper's IN network)",
}


def own_evaluation(r: dict) -> str:
    """The authors' set scored by their own evaluate_synset (one model per distillation seed)."""
    accs = [a for row in r["per_seed"] for a in row.get("official_own_evaluate_synset", [])]
    return f"{sum(accs) / len(accs):.2f} (n={len(accs)})" if accs else "-"


def main() -> None:
    print(
        "| method | dataset | IPC | iterations | distillation seeds | protocol (models) "
        "| authors' set | ddbench's set | difference | bound | within "
        "| authors' set, their own evaluation | result file |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for p in sys.argv[1:]:
        r = json.loads(Path(p).read_text())
        if "official" not in r:  # not a parity.py result (deepcore_*.json: index overlaps)
            continue
        o, d = r["official"], r["ddbench"]
        print(
            f"| {NAMES.get(r['method'], r['method'].upper())} | {r['dataset']} | {r['ipc']} | {r['iterations']} "
            f"| {','.join(map(str, r['distillation_seeds']))} | {r['protocol']} "
            f"({r['eval_seeds']}) | {o['mean']:.2f} ± {o['std']:.2f} "
            f"| {d['mean']:.2f} ± {d['std']:.2f} | {r['difference_ddbench_minus_official']:+.2f} "
            f"| {r['bound']:.2f} | {'yes' if r['within_bound'] else 'no'} "
            f"| {own_evaluation(r)} | `{p}` |"
        )


if __name__ == "__main__":
    main()
