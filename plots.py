"""
Every picture of the project, drawn with matplotlib, which is optional: without it, a line says so and nothing is
drawn. metrics.png (train.py), prosqa.png, thoughts.png and attention.png (analysis.py), grid.png (grid.py).
"""
import functools
import json
from pathlib import Path

def _figure(width, panels, height=3.6):
    try:
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    except ImportError:
        _no_matplotlib()
        return None, None
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots(1, panels)


@functools.cache
def _no_matplotlib():
    print("no plots: matplotlib is not installed (pip install matplotlib)", flush=True)


def _save(fig, plot_dir, name):
    path = Path(plot_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_metrics(out_dir):
    """metrics.png next to metrics.jsonl: training and validation loss, and validation accuracy, per epoch,
    with a line where each stage begins. Without matplotlib (optional), nothing."""
    fig, (loss_ax, acc_ax) = _figure(8, 2, height=3.5)
    if fig is None:
        return
    rows = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    epochs = [r["epoch"] for r in rows]
    loss_ax.plot(epochs, [r["train_loss"] for r in rows], marker=".", label="train")
    loss_ax.plot(epochs, [r["val_loss"] for r in rows], marker=".", label="validation")
    loss_ax.set(xlabel="epoch", ylabel="loss per supervised token", yscale="log")
    loss_ax.legend(fontsize="small", ncol=2, loc="lower left", bbox_to_anchor=(0, 1), frameon=False)  # above: clear of the
    # curves and of the stages' labels
    acc_ax.plot(epochs, [r["val_accuracy"] for r in rows], marker=".", color="C2")
    acc_ax.set(xlabel="epoch", ylabel="validation accuracy", ylim=(0, 1.02))
    for ax in (loss_ax, acc_ax):
        ax.xaxis.get_major_locator().set_params(integer=True)
        for prev, row in zip(rows, rows[1:]):
            if row["stage"] != prev["stage"]:
                ax.axvline(row["epoch"] - 0.5, color="gray", lw=0.6, ls=":")
                ax.annotate(f"stage {row['stage']}", (row["epoch"] - 0.5, 1), xycoords=("data", "axes fraction"),
                            fontsize=6, rotation=90, va="top", ha="right", color="gray")
    fig.suptitle(f"{Path(out_dir).name}: dotted lines mark a new curriculum stage", fontsize="small")
    fig.tight_layout()
    fig.savefig(Path(out_dir) / "metrics.png", dpi=110, bbox_inches="tight")


def plot_prosqa(rows, plot_dir):
    """prosqa.png: the share of each output class and the accuracy against k forced thoughts, and the mean value
    of frontier nodes on and off a shortest path."""
    with_values = any(r["value_on_path"] is not None or r["value_off_path"] is not None for r in rows)
    fig, panels = _figure(11 if with_values else 6, 2 if with_values else 1)
    if fig is None:
        return []
    classes, values = panels if with_values else (panels, None)
    ks = [r["k"] for r in rows]
    bottom = [0.0] * len(rows)
    for c in rows[0]["counts"]:  # the classes, in the order of the paper's (analysis.PROSQA_CLASSES)
        share = [r["counts"][c] / max(r["n"], 1) for r in rows]
        classes.bar(ks, share, bottom=bottom, label=c.replace("_", " "))
        bottom = [b + s for b, s in zip(bottom, share)]
    classes.plot(ks, [r["accuracy"] for r in rows], "k-o", label="accuracy")
    classes.set(xlabel="k (thoughts forced)", ylabel="share of outputs", title="Outputs after k thoughts", xticks=ks)
    classes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
    if with_values:  # none at k = 0, and so none for a method without thoughts
        for key, label in (("value_on_path", "on a shortest path"), ("value_off_path", "off every shortest path")):
            points = [(r["k"], r[key]) for r in rows if r[key] is not None]
            if points:
                values.plot(*zip(*points), marker="o", label=label)
        values.set(xlabel="k (thoughts forced)", ylabel="mean value", title="Frontier nodes' values after k thoughts",
                   xticks=ks)
        values.legend(fontsize="small")
        fig.subplots_adjust(wspace=0.6)
    return [_save(fig, plot_dir, "prosqa.png")]


def plot_search(rows, plot_dir):
    """thoughts.png: thought i's inner product with the nodes' embeddings and its LM-head probability of them, by
    class; attention.png: where the last layer looks while it computes thought i."""
    paths = []
    fig, panels = _figure(11, 2)
    if fig is None:
        return []
    ks = [r["i"] for r in rows]
    for ax, key, label in zip(panels, ("inner", "prob"), ("inner product with the node's embedding",
                                                          "LM head's probability of the node")):
        for c in rows[0][key]:  # the node classes (analysis.SEARCH_CLASSES), and the answer's path
            points = [(r["i"], r[key][c]) for r in rows if r[key][c] is not None]
            if points:
                ax.plot(*zip(*points), marker="o", label="on the answer's path" if c == "path" else c)
        ax.set(xlabel="thought i", ylabel=label, xticks=ks)
    panels[0].legend(fontsize="small")
    fig.suptitle("What thought i holds of each node: frontier = i hops from the root, reached = fewer, later = more")
    paths.append(_save(fig, plot_dir, "thoughts.png"))
    fig, ax = _figure(6, 1)
    bottom = [0.0] * len(rows)
    for c in rows[0]["attention"]:  # the node classes, and every other token
        mass = [r["attention"][c] or 0.0 for r in rows]
        ax.bar(ks, mass, bottom=bottom, label="other tokens" if c == "other" else f"edges from {c} nodes")
        bottom = [b + m for b, m in zip(bottom, mass)]
    ax.set(xlabel="thought i", ylabel="attention of the last layer", xticks=ks,
           title="Where the last layer reads while computing thought i\n(edge classes by their source at hop i - 1)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
    paths.append(_save(fig, plot_dir, "attention.png"))
    return paths


def plot_grid(results, path):
    """grid.png: each task's test accuracy by method, each seed a point and the mean a bar, and on the test sets one
    and two steps longer than training beside it."""
    tasks = list(dict.fromkeys(r["task"] for r in results["runs"]))
    if not tasks:
        return None
    fig, panels = _figure(7 * len(tasks), len(tasks), height=4.2)
    if fig is None:
        return None
    panels = panels if len(tasks) > 1 else [panels]
    for ax, task in zip(panels, tasks):
        rows = [r for r in results["runs"] if r["task"] == task]
        methods = list(dict.fromkeys(r["method"] for r in rows))
        for k, (key, label) in enumerate((("accuracy", "test"), ("test+1", "one step longer"),
                                          ("test+2", "two steps longer"))):
            for x, method in enumerate(methods):
                values = [r[key] for r in rows if r["method"] == method and r[key] is not None]
                if values:
                    ax.bar(x + (k - 1) * 0.27, sum(values) / len(values), width=0.25, color=f"C{k}", alpha=0.35,
                           label=label if x == 0 else None)
                    ax.plot([x + (k - 1) * 0.27] * len(values), values, "o", color=f"C{k}", ms=3)
        ax.set_xticks(range(len(methods)), [m.replace("_", " ") for m in methods], rotation=40, ha="right", fontsize=8)
        ax.axhline(results["chance"][task], color="gray", ls="--", lw=0.8, label="chance")
        ax.set(ylim=(0, 1.02), ylabel="accuracy")
        ax.set_title(f"{results['titles'][task]}: each seed a point, the mean a bar", pad=24)
        ax.legend(fontsize="small", loc="lower left", bbox_to_anchor=(0, 1.0), ncol=4, frameon=False)  # above the bars
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
