"""
Looking inside: what the steps of a reasoning hold of a graph's search.
"""
import json
import statistics
from pathlib import Path

from eval import prosqa_graph


def frontier_weights(path, records):
    """By hop i = 1, 2, ...: what step i of each question holds of the nodes i hops from the root (the frontier), from
    an evaluation's JSON whose examples carry "thoughts", each a list of top tokens and their weights (a thought's
    LM-head top tokens: eval.py --probe; or Soft Thinking's concept tokens, the mixture read back). For questions in
    symbols (synthetic.reachability), steps up to the answer's hops. One dict per hop: the mean number of frontier
    nodes, the step's mean weight on them and on the node of the answer's path, and the share of steps that give two
    frontier nodes 0.1 or more, among the questions whose frontier has two nodes or more."""
    per_hop = []
    for e in json.loads(Path(path).read_text())["examples"]:
        record = records[e["idx"]]
        hops = prosqa_graph(record)[0]
        node = {" " + name: v for v, name in enumerate(record["idx_to_symbol"])}
        on_path = [record["root"]] + [node[step] for step in record["steps"]]
        for i, top in enumerate(e["thoughts"][:len(record["steps"])], start=1):
            weights = {}
            for t in top:
                if t["token"] in node:
                    weights[node[t["token"]]] = weights.get(node[t["token"]], 0.0) + t["p"]
            frontier = [weights.get(v, 0.0) for v, d in hops.items() if d == i]
            if len(per_hop) < i:
                per_hop.append([])
            per_hop[i - 1].append(dict(frontier=len(frontier), weight=sum(frontier), path=weights.get(on_path[i], 0.0),
                                       holds_two=sum(w >= 0.1 for w in frontier) >= 2 if len(frontier) >= 2 else None))
    mean = lambda values: statistics.mean(values) if values else None
    return [dict(n=len(steps), **{key: mean([s[key] for s in steps if s[key] is not None])
                                  for key in ("frontier", "weight", "path", "holds_two")}) for steps in per_hop]
