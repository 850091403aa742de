#!/usr/bin/env bash
# Prepare a checkout of Mirage's code (frigategnn/Mirage) for the graph parity runs.
# Usage: bench/parity/official_mirage_setup.sh OFFICIAL_CHECKOUT
#
# Only NCI1/graph-nci-finalize-reduce-curr.py is run (the NCI1 pipeline: TUDataset loading,
# get_MPTree / get_can_lab_tree computation trees, pyfpgrowth mining per class at absolute
# thresholds, dropping the patterns of the other class, the tree graphs, their GNN with
# global_add_pool_custom root pooling). The same local edits for every run, applied idempotently
# (each marked "ddbench-parity M<n>"); nothing else in their code is changed:
#   M1 the TUDataset root and name come from MIRAGE_PARITY_ROOT / MIRAGE_PARITY_NAME: TU files
#      that bench/parity/mirage_parity.py writes from ddbench's splits, graphs in the order test,
#      val, train (PyG's TUDataset reads ROOT/NAME/raw/ and downloads nothing). datasetname stays
#      'NCI1', so the script's NCI1 branch (one-hot x -> label column) runs unchanged.
#   M2 `dataset = dataset.shuffle()` is skipped: the files are already in ddbench's split order.
#   M3 the split sizes: test = the first MIRAGE_PARITY_NTEST graphs, val the next
#      MIRAGE_PARITY_NVAL, train the rest (their code: 10 %, 10 %, 80 % of a shuffle).
#   M4 the thresholds: threshold_class_dict (their NCI1 {0: 460, 1: 590}) from
#      MIRAGE_PARITY_THRESHOLDS (JSON, absolute counts per class), num_steps 2 -> 1 and
#      step_size -20 -> 0 (each of their steps, the first included, lowers both thresholds by
#      20 before mining: NCI1 mines at {440, 570}, then {420, 550}); so both codes mine at the
#      given support.
#   M5 optional overrides of their seeds (use_seed, 1..10), epochs (301) and GNN list
#      (GATConv, GCNConv, GINConv): MIRAGE_PARITY_SEEDS, _EPOCHS, _GNNS; unset: theirs.
#   M6 test(): returns accuracy instead of ROC-AUC when MIRAGE_PARITY_METRIC=accuracy (their
#      code computes both and returns the AUC; unset: the AUC). Model selection (best val
#      epoch, the 5 of 10 seeds best on val) uses the same function, as in their code.
#   M7 after the distilled graphs are built (before their shuffle), the patterns (class,
#      frequency, trees with their node labels and child -> parent edges) and the graphs
#      (x, edge_index, roots_to_embed, y) are written as JSON to MIRAGE_PARITY_OUT/set.json.
#   M8 after each GNN's seeds, their per-seed best-val and test scores and the reported
#      mean/std are appended as a JSON line to MIRAGE_PARITY_OUT/results.jsonl.
#   M9 DD/model/gnns_edge2.py (their GNN, imported by the script as gnns_edge2): the methods'
#      first parameter `this` is renamed `self`. The same code; PyG 2.5+ builds propagate()
#      from message()'s signature and skips only a parameter named `self`, so with `this`
#      GCNConvEdge fails with "propagate() got an unexpected keyword argument 'x'".
# Nothing needs a device edit (their code picks 'cpu' without CUDA) and nothing is plotted
# (the script imports matplotlib but draws nothing). gnns_edge2 (their GNN) is imported from
# their DD/model/ via PYTHONPATH. Extra packages: pyfpgrowth, ogb (a scratch venv, see
# bench/parity/README.md).
set -euo pipefail
OFF=${1:?usage: official_mirage_setup.sh OFFICIAL_CHECKOUT}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
python3 - "$OFF" "$HERE/bench/parity" <<'PYEOF'
import sys
from pathlib import Path

off = Path(sys.argv[1])
sys.path.insert(0, sys.argv[2])
from patching import make_edit  # noqa: E402

edit = make_edit(off)  # bench/parity/patching.py
F = "NCI1/graph-nci-finalize-reduce-curr.py"

# M1
edit(F,
     "            dataset = TUDataset('data/TUDataset', name=datasetname)#",
     "            dataset = TUDataset(os.environ['MIRAGE_PARITY_ROOT'],"
     " name=os.environ['MIRAGE_PARITY_NAME'])  # ddbench-parity M1 #",
     "ddbench-parity M1")
# M2
edit(F, "dataset = dataset.shuffle()\n",
     "pass  # ddbench-parity M2: no shuffle, the files hold ddbench's split order\n",
     "ddbench-parity M2")
# M3
edit(F,
     "n = (len(dataset) + 9) // 10\n",
     "n = int(os.environ['MIRAGE_PARITY_NTEST'])  # ddbench-parity M3\n"
     "n_val = int(os.environ['MIRAGE_PARITY_NVAL'])  # ddbench-parity M3\n",
     "ddbench-parity M3")
edit(F,
     "val_dataset = dataset[n:2 * n]\ntrain_dataset = dataset[2 * n:]\n",
     "val_dataset = dataset[n:n + n_val]  # ddbench-parity M3b\n"
     "train_dataset = dataset[n + n_val:]\n",
     "ddbench-parity M3b")
# M4
edit(F,
     "    threshold_class_dict  = {0:460\n                         ,1:590\n                        }\n",
     "    import json  # ddbench-parity M4\n"
     "    threshold_class_dict = {int(k): v for k, v in"
     " json.loads(os.environ['MIRAGE_PARITY_THRESHOLDS']).items()}\n",
     "ddbench-parity M4")
edit(F, "num_steps=2\n", "num_steps=1  # ddbench-parity M4b\n", "ddbench-parity M4b")
edit(F, "step_size = -20\n", "step_size = 0  # ddbench-parity M4c\n", "ddbench-parity M4c")
# M5
edit(F,
     "use_seed = [1,2,3,4,5,6,7,8,9,10]\n",
     "use_seed = [1,2,3,4,5,6,7,8,9,10]\n"
     "if os.environ.get('MIRAGE_PARITY_SEEDS'):  # ddbench-parity M5\n"
     "    use_seed = [int(s) for s in os.environ['MIRAGE_PARITY_SEEDS'].split(',')]\n",
     "ddbench-parity M5")
edit(F,
     "for gnn_type in ['GATConv', 'GCNConv', 'GINConv']:\n",
     "for gnn_type in (os.environ.get('MIRAGE_PARITY_GNNS') or"
     " 'GATConv,GCNConv,GINConv').split(','):  # ddbench-parity M5b\n",
     "ddbench-parity M5b")
edit(F,
     "            for epoch in range(0, 301):\n",
     "            for epoch in range(0, int(os.environ.get('MIRAGE_PARITY_EPOCHS', 301))):"
     "  # ddbench-parity M5c\n",
     "ddbench-parity M5c")
# M6
edit(F,
     "         return score\n\n         return correct / len(loader.dataset)",
     "         if os.environ.get('MIRAGE_PARITY_METRIC') == 'accuracy':  # ddbench-parity M6\n"
     "             return correct / len(loader.dataset)\n"
     "         return score\n\n         return correct / len(loader.dataset)",
     "ddbench-parity M6")
# M7
edit(F,
     "        random.shuffle(graphs_py)\n",
     "        # ddbench-parity M7: the patterns and graphs built above, in their loop order\n"
     "        import json\n"
     "        _kept = [(c, p, f) for c, pf in patterns_dict.items() for p, f in pf.items()\n"
     "                 if p not in patterns_dict[1 - c]]\n"
     "        def _tree(t):\n"
     "            ids = {v: i for i, v in enumerate(t.nodes)}\n"
     "            return {'labels': [int(node_labels_rev[t.nodes[v]['label']][0]) for v in t.nodes],\n"
     "                    'edges': [[ids[a], ids[b]] for a, b in t.edges]}\n"
     "        json.dump({'thresholds': list(threshold_array),\n"
     "                   'mined_per_class': {c: len(pf) for c, pf in patterns_dict.items()},\n"
     "                   'patterns': [{'class': c, 'freq': int(f), 'codes': [str(k) for k in p],\n"
     "                                 'trees': [_tree(map_label_to_mptree[k]) for k in p]}\n"
     "                                for c, p, f in _kept],\n"
     "                   'graphs': [{'x': g.x.tolist(), 'edge_index': g.edge_index.tolist(),\n"
     "                               'roots': g.roots_to_embed.tolist(), 'y': int(g.y)}\n"
     "                              for g in graphs_py]},\n"
     "                  open(os.path.join(os.environ['MIRAGE_PARITY_OUT'], 'set.json'), 'w'))\n"
     "        random.shuffle(graphs_py)\n",
     "ddbench-parity M7")
# M8
edit(F,
     "        current_step_best_test_std = np.std(runs_stats_test_auc[current_step_best_val_index])\n",
     "        current_step_best_test_std = np.std(runs_stats_test_auc[current_step_best_val_index])\n"
     "        with open(os.path.join(os.environ['MIRAGE_PARITY_OUT'], 'results.jsonl'), 'a') as _f:"
     "  # ddbench-parity M8\n"
     "            _f.write(json.dumps({'gnn': gnn_type, 'seeds': use_seed,"
     " 'metric': os.environ.get('MIRAGE_PARITY_METRIC', 'auc'),\n"
     "                                 'val': runs_stats_val_auc.tolist(),"
     " 'test': runs_stats_test_auc.tolist(),\n"
     "                                 'top5_val_test_mean': float(current_step_best_test),\n"
     "                                 'top5_val_test_std': float(current_step_best_test_std)})"
     " + '\\n')\n",
     "ddbench-parity M8")
# M9
import re  # noqa: E402

p = off / "DD/model/gnns_edge2.py"
s = p.read_text()
if "ddbench-parity M9" not in s:
    s = re.sub(r"\bthis\b", "self", s)
    p.write_text("# ddbench-parity M9: `this` renamed `self` (PyG's message() inspection)\n" + s)
PYEOF
