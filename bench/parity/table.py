"""Print the parity table (markdown) from the JSON files that parity.py writes.

Usage: python bench/parity/table.py bench/results/parity/*.json
"""

import json
import math
import statistics
import sys
from pathlib import Path

NAMES = {
    "fyi_dm": "DM + FYI",
    "fyi_dsa": "DSA + FYI",
    "datadam": "DataDAM (the code's BN network)",
    "datadam_paper_net": "DataDAM (the paper's IN network)",
    "sre2l": "SRe2L (shared teacher)",
    "cda": "CDA (shared teacher)",
    "cvdd": "CV-DD (shared teacher, shared start)",
    "mtt": "MTT (shared experts)",
    "ftd": "FTD (shared experts)",
    "ast": "AST (shared experts)",
    "datm": "DATM (shared experts)",
    "krr_st": "KRR-ST (shared encoder)",
    "infer": "INFER (shared teachers, shared real images)",
}


def name(r: dict) -> str:
    """The row's method, marked where both sides started from one given set (the authors'
    ``--parity_init``: PARITY_OFFICIAL_INIT) or ddbench's side from the authors' images
    (``method.init_from`` in its command: PARITY_DDBENCH_ARGS)."""
    label = NAMES.get(r["method"], r["method"].upper())
    commands = r["commands"].items()
    if any("--parity_init" in c for k, c in commands if k.startswith("official")):
        label += " (both sides from one start)"
    elif any("method.init_from=" in c for k, c in commands if k.startswith("ddbench")):
        label += " (ddbench from the authors' start)"
    return label


def iterations(r: dict) -> str:
    """ddbench's iterations, and the authors' argument where it differs (PARITY_OFFICIAL_ITERATIONS)."""
    if "official_iterations" in r:
        return f"{r['iterations']} (authors' argument {r['official_iterations']})"
    return str(r["iterations"])


def own_evaluation(r: dict) -> str:
    """The authors' set scored by their own evaluate_synset (one model per distillation seed)."""
    accs = [a for row in r["per_seed"] for a in row.get("official_own_evaluate_synset", [])]
    return f"{sum(accs) / len(accs):.2f} (n={len(accs)})" if accs else "-"


def set_level_bound(r: dict) -> str:
    """max(1, 2 SE) with the SE taken over the sets (one mean per distillation seed and side),
    the unit that varies between distillations; '-' with fewer than 2 sets a side. The models of
    one set are not independent draws, so the pooled SE of `bound` understates this spread."""
    o, d = (r[s]["per_distillation_seed_mean"] for s in ("official", "ddbench"))
    if min(len(o), len(d)) < 2:
        return "-"
    se = math.sqrt(sum(statistics.variance(x) / len(x) for x in (o, d)))
    return f"{max(1.0, 2 * se):.2f}"


def main() -> None:
    print(
        "| method | dataset | IPC | iterations | distillation seeds | protocol (models) "
        "| authors' set | ddbench's set | difference | bound | within | bound over sets "
        "| authors' set, their own evaluation | result file |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for p in sys.argv[1:]:
        r = json.loads(Path(p).read_text())
        if "official" not in r:  # not a parity.py result (deepcore_*.json: index overlaps)
            continue
        o, d = r["official"], r["ddbench"]
        print(
            f"| {name(r)} | {r['dataset']} | {r['ipc']} | {iterations(r)} "
            f"| {','.join(map(str, r['distillation_seeds']))} | {r['protocol']} "
            f"({r['eval_seeds']}) | {o['mean']:.2f} ± {o['std']:.2f} "
            f"| {d['mean']:.2f} ± {d['std']:.2f} | {r['difference_ddbench_minus_official']:+.2f} "
            f"| {r['bound']:.2f} | {'yes' if r['within_bound'] else 'no'} | {set_level_bound(r)} "
            f"| {own_evaluation(r)} | `{p}` |"
        )


if __name__ == "__main__":
    main()
