"""
The pictures (matplotlib, optional: without it, none are drawn).
"""
from pathlib import Path


def _figure(width, panels, height=3.6):
    try:
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    except ImportError:
        return None, None
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots(1, panels)


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
        ax.set(ylim=(0, 1.02), ylabel="accuracy", title=f"{task}: each seed a point, the mean a bar")
        ax.legend(fontsize="small", loc="lower left")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
