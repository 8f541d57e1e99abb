"""
The laptop table: every method of train.py on the two tasks that isolate the paper's two claims, thoughts that
compose (the shell game) and thoughts that search (reachability), on several seeds; Soft Thinking on the CoT runs;
and test sets one and two steps longer than training. One command runs it and writes the tables and the picture.

    python grid.py                                   # 2 tasks x 11 methods x seeds 0, 1, 2: hours on a 2-core CPU
    python grid.py --tasks shellgame --methods coconut cot no_cot --seeds 0 1
    python grid.py --quick                           # two short runs on a handful of records: the pipeline, in a minute

Runs go --jobs at a time (default: one per core), each in processes of one thread, so that a run computes the same
whatever runs beside it. Run again, the same command continues an interrupted grid: a step whose output exists is
not run again, and a run stopped mid-way resumes from its `latest` checkpoint (train.py --resume). In --out_dir:

    runs/<task>/<method>/seed<s>/   the run (train.py's out_dir) and its evaluations: test+1.json, test+2.json,
                                    soft-<split>.json (Soft Thinking, on the CoT runs), probe.json (the thoughts)
    data/<task>/<task>_<split>.json the longer test sets, generated once (reachability's 7-hop questions are slow)
    results.json                    every run's numbers
    table.md, grid.png              the tables and the picture of docs/results.md (and the README's table)
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from analysis import frontier_weights
from data import METHODS, file_name, load_dataset
from plots import plot_grid
from recipes import recipe

ROOT = Path(__file__).resolve().parent
TASKS = ("shellgame", "reachability")
CHANCE = {"shellgame": 1 / 5, "reachability": 1 / 2}  # five cups; two candidates, one of them reachable
TITLES = {"shellgame": "The shell game", "reachability": "Reachability"}  # table.md's headings, as docs/results.md's
LONGER = ("test+1", "test+2")  # one and two steps longer than training (synthetic.GENERATED)
# Room for the written steps of the longer questions: the shell game's 6 steps take 30 tokens.
LONGER_NEW_TOKENS = {"shellgame": 48, "reachability": 24}
PRIORITY = ("coconut", "cot", "no_cot", "pause_as_thought", "simcot", "codi", "pccot", "no_curriculum", "pause",
            "no_thoughts", "icot")  # the order the runs go in (all of data.METHODS)
CLAIMS = PRIORITY[:4]  # the methods of the README's table: their every seed before the others' first
SEARCH_METHODS = ("coconut", "simcot")  # whose thought i stands where CoT writes the node i hops from the root
# --quick: one task, two methods, one seed, a handful of records, one epoch a stage: every step of the pipeline.
QUICK = dict(tasks=["shellgame"], methods=["coconut", "cot"], seeds=[0])
QUICK_TRAIN = ["--train_examples", "64", "--val_examples", "8", "--test_examples", "8", "--epochs_per_stage", "1",
               "--epochs", "6"]
QUICK_EVAL = ["--max_examples", "8"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="the datasets")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="train.py's --method values")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="train.py's --seed values")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs at once, each on one thread")
    p.add_argument("--out_dir", default="out/grid", help="where runs, results and tables go")
    p.add_argument("--quick", action="store_true", help="two short runs on a handful of records (what the tests run)")
    p.add_argument("--summarize", action="store_true", help="run nothing: write the results, tables and picture of the "
                                                            "runs finished so far (of a grid still running, say)")
    args = p.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    return args


# -----------------------------------------------------------------------------------------------------------
# The steps: each a command whose output file says that it is done

class Run:
    """One (task, method, seed): its folder, and the commands that train and evaluate it."""

    def __init__(self, out_dir, task, method, seed, quick):
        self.task, self.method, self.seed, self.quick, self.out_dir = task, method, seed, quick, Path(out_dir)
        self.dir = self.out_dir / "runs" / task / method / f"seed{seed}"
        self.data_dir = Path(out_dir) / "data" / task
        self.name = f"{task} {method} seed {seed}"

    @property
    def test(self):
        """train.py's test.json: in the run's folder, or in its method's after a CoT phase (None before the end)."""
        return next(self.dir.glob("**/test.json"), None)

    def steps(self):
        """(name, output file, command) of each step, in order: training first, whose checkpoint the others read
        (the steps after it are made once it is done: this is a generator)."""
        yield "train", self.dir / "test.json", [
            sys.executable, "train.py", "--dataset", self.task, "--method", self.method, "--seed", str(self.seed),
            "--out_dir", str(self.dir), "--resume", *(QUICK_TRAIN if self.quick else [])]
        latents = METHODS[self.method].latents
        for k, split in enumerate(LONGER, start=1):  # each method given what the longer question needs
            more = ["--max_latent_stage", str(recipe(self.task, self.method)["max_latent_stage"] + k)] if latents else []
            yield split, *self.evaluation(split, f"{split}.json", *more)
        if self.method == "cot":  # Soft Thinking needs no training: it runs on the CoT model
            for split in ("test", *LONGER):
                yield f"soft {split}", *self.evaluation(split, f"soft-{split}.json", "--soft_thinking")
        if self.method in SEARCH_METHODS and self.task == "reachability":
            yield "probe", *self.evaluation("test", "probe.json", "--probe", "--probe_topk", "10")

    def evaluation(self, split, name, *flags):
        """(output, command) of eval.py on a split of the run's best checkpoint."""
        folder = self.test.parent
        ckpt = folder / "best" if (folder / "best").exists() else folder / "latest"
        longer = ["--data_dir", str(self.data_dir), "--max_new_tokens", str(LONGER_NEW_TOKENS[self.task])] \
            if split in LONGER else []
        return self.dir / name, [sys.executable, "eval.py", "--ckpt", str(ckpt), "--split", split, *longer, *flags,
                                 "--out", str(self.dir / name), *(QUICK_EVAL if self.quick else [])]

    def shares_cot_phase(self):
        """Whether this run's first epochs are the CoT phase of the Coconut run of its task and seed, which it would
        train the same: CoT itself, or a method written as Coconut writes (the same vocabulary, so the same
        initialisation) that starts with the recipe's CoT phase."""
        spec = METHODS[self.method]
        if recipe(self.task, "coconut")["cot_epochs"] == 0 or self.method in ("coconut", "no_cot"):
            return False
        if self.method == "cot":  # its first epochs are the phase's if it starts where the phase does
            return recipe(self.task, "cot")["start_epoch"] == 0
        return spec.format == "coconut" and not spec.teacher and not spec.step_targets

    def borrow_cot_phase(self):
        """Before training: the finished CoT phase of the Coconut run of the same task and seed, if this run would
        train the very same one (lend_cot_phase). Whether it was borrowed."""
        donor = Run(self.out_dir, self.task, "coconut", self.seed, self.quick)
        return self.shares_cot_phase() and donor.test is not None and lend_cot_phase(donor.dir / "cot", self.dir,
                                                                                     self.method)

    def execute(self, data_ready, say):
        """Every step not done yet, one after the other; evaluations on the longer sets wait for their files."""
        for name, output, command in self.steps():
            if name == "train" and self.test is not None or name != "train" and output.exists():
                continue
            if name == "train" and self.borrow_cot_phase():
                say(f"{self.name}: starts from the CoT phase of the Coconut run of its seed, which it would train the same")
            if name in LONGER or name.startswith("soft test+"):
                data_ready[self.task].wait()
            log = self.dir / f"{name.replace(' ', '-')}.log"
            t0 = time.time()
            if not execute(command, log):
                return say(f"{self.name}: {name} failed: see {log}")
            if name == "train" and self.test is None:
                return say(f"{self.name}: training ended without testing: see {log}")
            say(f"{self.name}: {name} done in {time.time() - t0:.0f} s")


def lend_cot_phase(phase, run_dir, method):
    """A finished CoT phase (a Coconut run's `cot` folder) copied to a run that would train the very same one, so that
    train.py --resume continues from it, exactly: into its `cot` folder (a method after a CoT phase), or as the run's
    first epochs (--method cot, which trains on). Whether it was lent (not if the run has started already)."""
    target = run_dir if method == "cot" else run_dir / "cot"
    if (target / "latest").exists():
        return False
    target.mkdir(parents=True, exist_ok=True)
    for item in phase.iterdir():  # checkpoints, the links to them (`latest`, `best`), metrics.jsonl and .png
        if item.is_symlink() or not item.is_dir():
            shutil.copy2(item, target / item.name, follow_symlinks=False)
        else:
            shutil.copytree(item, target / item.name)
    return True


def execute(command, log):
    """Run a command in a process of one thread, its output appended to log; whether it succeeded."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        return subprocess.call(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env) == 0


def write_longer_sets(out_dir, task, say):
    """The longer test sets of a task as files (data.py --out), generated once: every evaluation then reads them."""
    folder = Path(out_dir) / "data" / task
    for split in LONGER:
        path = folder / file_name(task, split)
        if not path.exists():
            t0 = time.time()
            if not execute([sys.executable, "data.py", "--dataset", task, "--split", split, "--out", str(path)],
                           folder / f"{split}.log"):
                return say(f"{task} {split}: generating failed: see {folder / f'{split}.log'}")
            say(f"{task} {split}: generated in {time.time() - t0:.0f} s")


# -----------------------------------------------------------------------------------------------------------
# The results

def accuracy(path):
    """Accuracy and mean tokens of an evaluation's JSON (train.py's test.json or eval.py's --out), or None."""
    if not path.exists():
        return None
    out = json.loads(path.read_text())
    return dict(accuracy=out["accuracy"], tokens=out["mean_tokens"], n=out["n"])


def minutes(run):
    """Training and validation wall time of a run (every phase), in minutes, from its metrics.jsonl lines."""
    lines = [json.loads(line) for f in run.dir.glob("**/metrics.jsonl") for line in f.read_text().splitlines()]
    return sum(m["seconds"] + m["val_seconds"] for m in lines) / 60 if lines else None


def collect(args):
    """Every run's numbers: test accuracy and tokens, the longer sets, wall time; Soft Thinking; the frontier."""
    runs, soft, search = [], [], []
    for task in args.tasks:
        for method in args.methods:
            for seed in args.seeds:
                run = Run(args.out_dir, task, method, seed, args.quick)
                if run.test is None:
                    continue
                row = dict(task=task, method=method, seed=seed, minutes=minutes(run), **accuracy(run.test))
                row.update({split: (accuracy(run.dir / f"{split}.json") or {}).get("accuracy") for split in LONGER})
                runs.append(row)
                if method == "cot" and (run.dir / "soft-test.json").exists():
                    row = dict(task=task, method="soft_thinking", seed=seed, minutes=None,
                               **accuracy(run.dir / "soft-test.json"))
                    row.update({split: (accuracy(run.dir / f"soft-{split}.json") or {}).get("accuracy") for split in LONGER})
                    soft.append(row)
                    if task == "reachability":
                        search.append(dict(method="soft_thinking", seed=seed,
                                           hops=frontier_weights(run.dir / "soft-test.json", load_dataset(task, "test"))))
                if (run.dir / "probe.json").exists():
                    search.append(dict(method=method, seed=seed,
                                       hops=frontier_weights(run.dir / "probe.json", load_dataset(task, "test"))))
    return dict(runs=runs + soft, search=search, chance={task: CHANCE[task] for task in args.tasks},
                titles={task: TITLES[task] for task in args.tasks})


def command(args):
    """The command line that makes this grid."""
    flags = ["--quick"] if args.quick else [
        *(["--tasks", *args.tasks] if args.tasks != list(TASKS) else []),
        *(["--methods", *args.methods] if args.methods != list(METHODS) else []),
        *(["--seeds", *map(str, args.seeds)] if args.seeds != [0, 1, 2] else [])]
    return " ".join(["python grid.py", *flags])


def table(results, args):
    """The Markdown tables: per task, each method's test accuracy (mean, standard deviation over seeds, and each
    seed's), on the longer sets, tokens and wall time; the per-seed gaps the README's claims rest on; the search."""
    lines = [f"Made by `{command(args)}`: test accuracy (%) on the 500 test questions; one and two steps longer: the "
             f"test sets test+1 and test+2 (500 questions each, reachability's test+2 200), each method given one or "
             f"two steps' thoughts more; tokens per answer (thoughts included) on the test questions; minutes of "
             f"training and validation of a run (every phase), one thread, {args.jobs} runs at once: a wall time, which "
             f"moves with whatever else the machine runs (speed is bench.py's to measure).", ""]
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"
    for task in args.tasks:
        rows = [r for r in results["runs"] if r["task"] == task]
        if not rows:
            continue
        seeds = sorted({r["seed"] for r in rows})
        lines += [f"## {TITLES[task]}", "", "| method | test accuracy (mean ± sd) | " + " | ".join(f"seed {s}" for s in seeds)
                  + " | one step longer | two steps longer | tokens | minutes |", "|---" * (len(seeds) + 6) + "|"]
        for method in [*args.methods, "soft_thinking"]:
            mine = {r["seed"]: r for r in rows if r["method"] == method}
            if not mine:
                continue
            acc = [r["accuracy"] for r in mine.values()]
            sd = f" ± {100 * statistics.stdev(acc):.1f}" if len(acc) > 1 else ""
            mean = lambda key: (lambda v: statistics.mean(v) if v else None)(
                [r[key] for r in mine.values() if r[key] is not None])
            minutes_ = mean("minutes")
            lines.append(f"| {method} | {pct(statistics.mean(acc))}{sd} | "
                         + " | ".join(pct(mine[s]["accuracy"]) if s in mine else "-" for s in seeds)
                         + f" | {pct(mean('test+1'))} | {pct(mean('test+2'))} | {mean('tokens'):.1f} | "
                         + ("-" if minutes_ is None else f"{minutes_:.1f}") + " |")
        lines.append("")
        baseline = "no_cot" if task == "shellgame" else "cot"
        by = {(r["method"], r["seed"]): r["accuracy"] for r in rows}
        gaps = [f"seed {s}: {100 * (by[('coconut', s)] - by[(baseline, s)]):+.1f}" for s in seeds
                if ("coconut", s) in by and (baseline, s) in by]
        if gaps:
            lines += [f"Coconut minus {baseline}, test accuracy points: " + ", ".join(gaps) + ".", ""]
    if results["search"]:
        lines += search_table(results["search"])
    g = results["grid"]
    return lines + [f"{g['finished']} of {g['runs']} runs finished; the grid's wall time: {g['hours']:.1f} h in "
                    f"{g['invocations']} invocation(s) of `{g['command']}`."]


def search_table(search):
    """By hop, each method's weight on the frontier's nodes, averaged over seeds."""
    lines = ["## What the steps hold of the frontier (reachability, test split)", "",
             "Step i: Coconut's thought i (its LM head's 10 likeliest tokens), or Soft Thinking's concept token i (the "
             "mixture read back); the frontier: the nodes i hops from the root. Means over the questions with a step i "
             "(on average over the seeds), and over the seeds.", "",
             "| method | hop | questions | frontier nodes | weight on the frontier | on the path's node | "
             "holds two frontier nodes (of frontiers of two or more) |", "|---|---|---|---|---|---|---|"]
    for method in dict.fromkeys(s["method"] for s in search):
        mine = [s["hops"] for s in search if s["method"] == method]
        for i in range(min(len(h) for h in mine)):
            def m(key):  # over the seeds that have a value (holds_two has none where every frontier is one node)
                values = [h[i][key] for h in mine if h[i][key] is not None]
                return statistics.mean(values) if values else None
            two = "-" if m("holds_two") is None else f"{100 * m('holds_two'):.1f}%"
            lines.append(f"| {method} | {i + 1} | {m('n'):.0f} | {m('frontier'):.2f} | {m('weight'):.3f} | "
                         f"{m('path'):.3f} | {two} |")
    return lines + [""]


def main(argv=None):
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock, t0 = threading.Lock(), time.time()

    def say(message):
        with lock:
            print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    runs = [Run(out_dir, t, m, s, args.quick) for t in args.tasks for m in args.methods for s in args.seeds]
    # The runs that the README's claims rest on first, every seed of them; then every other method on seed 0, then on
    # seed 1, ..., so that a grid cut short has a whole table of its first seeds. Within a method and seed, the long
    # task first.
    runs.sort(key=lambda r: (0 if r.method in CLAIMS else 1 + r.seed, PRIORITY.index(r.method), r.seed,
                             r.task != "reachability"))
    data_ready = {task: threading.Event() for task in args.tasks}
    say(f"{len(runs)} runs, {args.jobs} at a time, in {out_dir}" if not args.summarize else f"{out_dir}: summarizing")

    def longer_sets(task):
        try:
            write_longer_sets(out_dir, task, say)
        finally:  # evaluations of a set that failed fail in their turn, each saying so
            data_ready[task].set()

    if not args.summarize:
        with ThreadPoolExecutor(args.jobs) as pool:
            for task in args.tasks:
                pool.submit(longer_sets, task)
            for run in runs:
                pool.submit(run.execute, data_ready, say)
    results = collect(args)
    finished = sum(r["method"] != "soft_thinking" for r in results["runs"])
    if not args.summarize:
        with open(out_dir / "invocations.jsonl", "a") as f:
            f.write(json.dumps(dict(start=t0, minutes=(time.time() - t0) / 60, jobs=args.jobs, finished=finished)) + "\n")
    invocations_file = out_dir / "invocations.jsonl"
    invocations = [json.loads(line) for line in invocations_file.read_text().splitlines()] if invocations_file.exists() else []
    results["grid"] = dict(command=command(args), tasks=args.tasks, methods=args.methods, seeds=args.seeds,
                           runs=len(runs), finished=finished, hours=sum(i["minutes"] for i in invocations) / 60,
                           invocations=len(invocations))
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out_dir / "table.md").write_text("\n".join(table(results, args)) + "\n")
    plot_grid(results, out_dir / "grid.png")
    say(f"{finished} of {len(runs)} runs finished; this invocation took {(time.time() - t0) / 60:.1f} min, the grid "
        f"{results['grid']['hours']:.2f} h in {len(invocations)} invocations; wrote {out_dir / 'results.json'}, "
        f"{out_dir / 'table.md'}, {out_dir / 'grid.png'}")


if __name__ == "__main__":
    main()
