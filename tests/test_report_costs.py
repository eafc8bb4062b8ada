"""What a comparison's rows cost, as its report states it, checked independently;
intervals that never claim more than the data allow; the compute-matched
controls; the figures; and ``--plan``, a sweep's price before it runs."""

from __future__ import annotations

import csv
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dsr_tune import cli
from dsr_tune import config as C
from dsr_tune import runfolder
from dsr_tune.models import build_model, sparse_names
from dsr_tune.sparse import layer_counts
from dsr_tune.sweep import plan, spec
from dsr_tune.sweep.report import dynamics, render, stats
from dsr_tune.sweep.report.stats import Line, RunRow

from conftest import DEMO, DIGITS, ROOT
from test_flops import BATCH, module_flops, recount

SHORT = [f"data.batch_size={BATCH}", "train.epochs=2", "optim.milestones=[]", "train.threads=1",
         "sparsity.period_schedule=[[0, 5]]", "sparsity.stop_epoch=2", "sparsity.dsr.target_pruned=100"]
DENSE_GRADIENT = {"rigl": "at its updates"}  # as tests/test_flops.py counts it
CI = re.compile(r"\[([-+]?\d+\.\d+), ([-+]?\d+\.\d+)\]")


def _table_cells(md: str) -> list[dict]:
    """The rows of report.md's tables as {column: cell}."""
    out, head = [], None
    for line in md.splitlines():
        if line.startswith("|---"):
            continue
        if not line.startswith("| "):
            head = None
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if head is None:
            head = cells
        else:
            out.append(dict(zip(head, cells)))
    return out


def test_the_reports_flops_agree_with_an_independent_count(tmp_path):
    """The issue's check: a comparison's FLOPs columns against FlopCounterMode's count of
    the model at density 1 times the recorded per-layer densities and images; no printed
    interval leaves [0, 100]."""
    out, uri = tmp_path / "cmp", f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert cli.main(["compare", DIGITS, *SHORT, "--methods", "dsr,static_1x,rigl,dense", "--seeds", "3",
                     "--output", str(out), "--tracking-uri", uri]) == 0
    rows = {r["method"]: r for r in csv.DictReader(open(out / "report.csv"))}
    assert list(rows) == ["dsr", "static_1x", "rigl", "dense"]
    counted = {}
    for label in rows:
        runs = [out / "runs" / "paired" / label / ("" if label == "dense" else "s0.9") / f"seed{k}" for k in range(3)]
        counts = [recount(run, DENSE_GRADIENT.get(label)) for run in runs]
        counted[label] = (statistics.mean(c[0][-1] for c in counts), statistics.mean(c[1][-1] for c in counts))
    dense_forward = sum(module_flops(build_model("small_cnn", in_channels=1), (1, 1, 8, 8)).values())
    assert counted["dense"][1] == dense_forward
    md = (out / "report.md").read_text()
    cells = {c["method"]: c for c in _table_cells(md) if "method" in c}
    for label, row in rows.items():
        train, infer = counted[label]
        assert float(row["train_flops"]) == pytest.approx(train, rel=1e-12), label
        assert float(row["train_flops_x"]) == pytest.approx(train / counted["dense"][0], rel=1e-12), label
        assert float(row["infer_flops_x"]) == pytest.approx(infer / dense_forward, rel=1e-12), label
        assert cells[label]["train FLOPs (x dense)"] == f"{train / counted['dense'][0]:.2f}x"
        assert cells[label]["infer FLOPs (x dense)"] == f"{infer / dense_forward:.3f}x"
        assert float(row["train_time"]) > 0 and row["device"] == "cpu" and cells[label]["device"] == "cpu"
    assert rows["static_1x"]["train_flops_x"] < rows["rigl"]["train_flops_x"] < rows["dense"]["train_flops_x"]
    assert "the dense row's own training FLOPs" in md
    assert "The test split: 359 images; one image is worth 0.279 accuracy points." in md
    # every interval printed (mean: [0, 100]; paired difference: [-100, 100]); n = 3: each row has one
    for c in cells.values():
        assert CI.fullmatch(c["95% CI"].rstrip("*")) or c["95% CI"] == "no spread", c
        for lo, hi in CI.findall(c["95% CI"]):
            assert 0 <= float(lo) <= float(hi) <= 100, c
        for lo, hi in CI.findall(c["Δ vs DSR (paired, 95% CI)"]):
            assert -100 <= float(lo) <= float(hi) <= 100, c
    from mlflow import MlflowClient  # the parent run holds the same cost numbers

    client = MlflowClient(uri)
    parent = client.search_runs([client.get_experiment_by_name("cmp").experiment_id],
                                filter_string="tags.role = 'parent'")[0]
    assert parent.data.metrics["s0.9/rigl/train_flops_x"] == pytest.approx(float(rows["rigl"]["train_flops_x"]))
    assert parent.data.metrics["s0.9/dense/infer_flops_x"] == 1.0


def test_a_compute_matched_control_trains_the_epochs_dsrs_flops_buy(tmp_path):
    out = tmp_path / "cmp"
    assert cli.main(["compare", DIGITS, *SHORT, "model.width=0.5", "--methods", "dsr,static_1x,static_cm",
                     "--seeds", "1", "--output", str(out)]) == 0
    last = {label: runfolder.last_epoch(out / "runs/paired" / label / "s0.9/seed0")
            for label in ("dsr", "static_1x", "static_cm")}
    # static sparse's cost is known before it trains: per image, 3 forwards at its planned masks
    per_epoch = last["static_1x"]["train_flops"] // 2
    job = {j["key"]: j for j in json.loads((out / runfolder.PAIRED).read_text())}["paired/static_cm/s0.9/seed0"]
    assert job["stage"] == 1 and job["needs"] == "paired/dsr/s0.9/seed0"
    assert job["matched"] == {"flops_of": "paired/dsr/s0.9/seed0", "budget": last["dsr"]["train_flops"],
                              "per_epoch": per_epoch, "epochs": round(last["dsr"]["train_flops"] / per_epoch)}
    assert last["static_cm"]["epochs_done"] == job["matched"]["epochs"] == job["config"]["train"]["epochs"]
    assert abs(last["static_cm"]["train_flops"] - last["dsr"]["train_flops"]) <= per_epoch / 2
    rows = {r["method"]: r for r in csv.DictReader(open(out / "report.csv"))}
    assert list(rows) == ["dsr", "static_1x", "static_cm"]


def _parent(folder: Path, cfg: dict, epochs: int, flops: int) -> None:
    folder.mkdir(parents=True)
    (folder / runfolder.CONFIG).write_text(yaml.safe_dump(cfg))
    runfolder.write_records(folder / runfolder.METRICS, [
        {"kind": "epoch", "epoch": e, "step": 40 * (e + 1), "train_flops": flops * (e + 1) // epochs,
         "train_images": 1280 * (e + 1)} for e in range(epochs)])


def test_the_matched_epochs_and_schedules_from_a_known_budget(tmp_path):
    cfg = C.load(DIGITS)  # 30 epochs, milestones [15, 25], periods [[0, 15], [10, 30], [20, 60]], stop 27
    space = spec.for_compare(cfg, name="m", sparsities=[0.9], seeds=[0], labels=["dsr", "static_cm", "thin_dense_cm"])
    refs = {0.9: (C.replace(cfg, **{"sparsity.sparsity": 0.9}), None)}
    jobs = plan.jobs_for(space, refs, {}, lambda key: tmp_path / key)
    by = {j.key: j for j in jobs}
    static = by["paired/static_cm/s0.9/seed0"]
    assert static.stage == 1 and static.matched == {"flops_of": "paired/dsr/s0.9/seed0"}
    # static's training FLOPs an epoch, counted here: FlopCounterMode per layer at its uniform 10% masks
    model = build_model("small_cnn", in_channels=1)
    per = module_flops(model, (1, 1, 8, 8))
    names = sparse_names("small_cnn", model)
    counts = layer_counts({n: p.shape for n, p in model.named_parameters() if n in names}, 0.1)
    numel = dict((n, p.numel()) for n, p in model.named_parameters())
    forward = sum(f * counts[n] // numel[n] if n in counts else f for n, f in per.items())
    per_epoch = 3 * forward * 1280  # 40 batches of 32
    _parent(tmp_path / "paired/dsr/s0.9/seed0", by["paired/dsr/s0.9/seed0"].config, 30, int(per_epoch * 45.2))
    done = plan.match_budgets(jobs, lambda key: tmp_path / key)
    assert sorted(done) == ["paired/static_cm/s0.9/seed0", "paired/thin_dense_cm/s0.9/seed0"]
    assert static.matched["per_epoch"] == per_epoch and static.matched["epochs"] == 45  # 45.2, to the nearest
    t = static.config["train"], static.config["optim"], static.config["sparsity"]
    assert t[0]["epochs"] == 45 and t[1]["milestones"] == [round(15 * 1.5), round(25 * 1.5)]
    assert t[2]["period_schedule"] == [[0, 15], [15, 30], [30, 60]] and t[2]["stop_epoch"] == round(27 * 1.5)
    thin = by["paired/thin_dense_cm/s0.9/seed0"]  # its own narrower model: more or fewer epochs, its own count
    assert thin.matched["epochs"] == round(per_epoch * 45.2 / thin.matched["per_epoch"]) != 30
    assert plan.match_budgets(jobs, lambda key: tmp_path / key) == []  # once: a resumed sweep keeps them
    assert "compute-matched" in static.description() and "45 epochs" in static.description()
    # a DSR run that did not train to the end gives no budget
    jobs = plan.jobs_for(space, refs, {}, lambda key: tmp_path / "short" / key)
    _parent(tmp_path / "short/paired/dsr/s0.9/seed0", by["paired/dsr/s0.9/seed0"].config, 3, 10)
    with pytest.raises(RuntimeError, match="did not train to the end"):
        plan.match_budgets(jobs, lambda key: tmp_path / "short" / key)


def _line(method: str, accs: list[float], **kw) -> Line:
    return Line(method, 0.9, dict(enumerate(accs)), 100, 10, **kw)


def test_intervals_never_claim_more_than_the_data_allow():
    two = _line("static_1x", [0.9, 0.95])
    assert two.ci is None and render._ci(two) == "n < 3"
    top = _line("static_1x", [0.99, 1.0, 1.0])  # the t interval reaches past 100%
    assert stats.t_interval(top.acc)[1] > 1 and top.ci[1] == 1.0 and top.clipped
    assert render._ci(top).endswith(", 100.00]*")
    flat = _line("static_1x", [0.9, 0.9, 0.9])
    assert render._ci(flat) == "no spread" and not flat.spread
    d = stats.paired({0: 1.0, 1: 0.0, 2: 1.0}, {0: 0.0, 1: 1.0, 2: 0.0})  # a difference of two accuracies
    assert d.ci == (-1.0, 1.0) and d.clipped and render._diff(_line("x", [1, 0, 1], diff=d)).count("*") == 1
    assert stats.paired({0: 0.9, 1: 0.8}, {0: 0.8, 1: 0.7}).ci is None  # n = 2
    spread = stats.paired({1: 0.9, 2: 0.85, 3: 0.7}, {1: 0.8, 2: 0.7, 3: 0.6})
    from scipy.stats import ttest_rel

    assert spread.p == pytest.approx(ttest_rel([0.9, 0.85, 0.7], [0.8, 0.7, 0.6]).pvalue)
    rows = [RunRow(f"paired/dsr/s0.9/seed{k}", "selected", "dsr", 0.9, k, "FINISHED",
                   {"test_acc": 0.9, "test_n": 400}, 10) for k in range(3)]
    header = "\n".join(render.header(stats.summarize("x", rows)))
    assert "The test split: 400 images; one image is worth 0.25 accuracy points." in header


def test_a_derived_rows_parent_is_counted_apart():
    def row(method, role, sparsity, seed, flops, epochs=10):
        return RunRow(f"paired/{method}/{seed}", role, method, sparsity, seed, "FINISHED",
                      {"test_acc": 0.9, "train_flops": flops, "infer_flops": 10, "dense_flops": 100,
                       "train_images": 50 * epochs, "epochs_done": epochs}, epochs, device="cpu")

    rows = [row("dsr", "selected", 0.9, 1, 3000), row("gmp", "baseline", 0.9, 1, 2000),
            row("final_init", "baseline", 0.9, 1, 1500), row("dense", "dense", None, 1, 150_000)]
    lines = {ln.method: ln for ln in stats.summarize("x", rows).sections[0.9]}
    assert lines["gmp"].cost.train_x == pytest.approx(2000 / 150_000) and lines["gmp"].cost.parent_x == 1.0
    assert lines["final_init"].cost.parent_x == pytest.approx(3000 / 150_000)
    assert render._flops(lines["gmp"]) == "0.01x + 1.00x parent" and lines["dsr"].cost.parent_x is None
    # no dense row: 3 x the dense model's forward FLOPs x DSR's training images (50 an epoch, 10 epochs)
    t = stats.summarize("x", rows[:3])
    assert t.sections[0.9][0].cost.train_x == pytest.approx(3000 / (3 * 100 * 500))
    assert "no dense row: computed as 3 x the dense model's 100 forward FLOPs per image x 500" in t.flops_reference


def _captured(monkeypatch) -> list:
    figures = []

    def keep(fig, path):
        fig.canvas.draw()
        figures.append(fig)
        return Path(path)

    monkeypatch.setattr(runfolder, "save_figure", keep)
    return figures


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_the_report_figure_labels_each_sparsity_within_0_to_100(monkeypatch, tmp_path):
    rows = []
    for s, accs in ((0.8, (0.995, 1.0, 1.0)), (0.9, (0.97, 0.99, 0.95))):
        for k, a in enumerate(accs):
            for method, acc, flops in (("dsr", a, 30), ("static_1x", a - 0.01 * k, 20), ("gmp", a - 0.02, 25)):
                rows.append(RunRow(f"paired/{method}/{s}/{k}", "baseline", method, s, k, "FINISHED",
                                   {"test_acc": acc, "nonzero_params": 1000 * (1 - s), "train_flops": flops,
                                    "infer_flops": 5, "dense_flops": 50, "train_images": 10, "epochs_done": 1}, 1))
        rows += [RunRow(f"paired/dense/{k}", "dense", "dense", None, k, "FINISHED",
                        {"test_acc": 0.99, "nonzero_params": 1000, "train_flops": 150, "infer_flops": 50,
                         "dense_flops": 50}, 1) for k in range(3)]
    figures = _captured(monkeypatch)
    render.plot(stats.summarize("x", rows), tmp_path / "r.png")
    (fig,) = figures
    params, cost = fig.axes[:2]
    for ax in (params, cost):
        lo, hi = ax.get_ylim()
        assert 0 <= lo < hi <= 100
        assert {t.get_text() for t in ax.texts} >= {"sparsity 0.8", "sparsity 0.9"}
    assert "FLOPs" in cost.get_xlabel() and fig.legends  # the legend below the panels, over none of them
    for legend in fig.legends:
        assert not any(_overlaps(legend.get_window_extent(), ax.get_window_extent()) for ax in fig.axes)


def test_the_dynamics_figure_labels_every_line_and_covers_none(monkeypatch, tmp_path):
    from test_diagnostics import _run

    paired = tmp_path / runfolder.RUNS / "paired"
    labels = ["dsr", "set", "dsr_stop:2", "rigl", "snfs"]
    for label in labels:
        _run(paired / label.replace(":", "_") / "s0.9" / "seed0", label.partition(":")[0].replace("_stop", ""),
             threshold=label.startswith("dsr"))
    table = stats.Table("t", "val_acc", "max", sections={0.9: [_line(m, [0.9, 0.91]) for m in labels]})
    figures = _captured(monkeypatch)
    assert len(dynamics.plot(tmp_path, table)) == 1
    (fig,) = figures
    axes = [ax for ax in fig.get_axes()]
    assert all(ax.axison for ax in axes) and len(axes) == 2 + 1 + len(labels)  # H/K (and K's twin), turnover, densities
    texts = [t.get_text() for ax in axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert {"H, the threshold", "K, pruned", "Np = 30 (band: +-10%)"} <= set(texts)
    assert {f"{m}: pruned / budget" for m in labels} <= set(texts)
    legends = [ax.get_legend() for ax in axes if ax.get_legend()] + [lg for sub in fig.subfigs for lg in sub.legends]
    assert {t.get_text() for lg in legends for t in lg.get_texts()} >= {"a", "b"}  # the layers, once
    for lg in legends:
        assert not any(_overlaps(lg.get_window_extent(), ax.get_window_extent()) for ax in axes)


def _cli(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    code = ("import sys\nfrom dsr_tune import cli\nrc = cli.main(sys.argv[1:])\n"
            "print('imported:', sorted(m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules))\nsys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)


def test_plan_prices_a_sweep_without_training_or_writing(tmp_path):
    proc = _cli(tmp_path, "sweep", DEMO, "--plan", "--throughput", "1000")
    assert proc.returncode == 0, proc.stderr
    assert not list(tmp_path.iterdir()) and "imported: []" in proc.stdout  # no file, no Ray, no MLflow
    out = proc.stdout
    for phase in ("search-dsr-s0.8", "search-dsr-s0.9", "paired-0", "total"):
        assert re.search(rf"^{phase} ", out, re.M), phase
    assert re.search(r"^paired-0\s+22\s+300\s", out, re.M)  # 2 seeds x (dense + 5 rows x 2 sparsities)
    assert "Time at 1,000.0 training images/s per run (given with --throughput)" in out
    # the CIFAR-10 space prices without its data files (data.root is not here)
    proc = _cli(tmp_path, "sweep", str(ROOT / "search_spaces" / "cifar10_wrn28_2.yaml"), "--plan", "--throughput", "5000")
    assert proc.returncode == 0, proc.stderr
    assert "45,000 training images" in proc.stdout and "<= 1600" in proc.stdout


def test_a_compare_plan_counts_what_the_runs_will(tmp_path, capsys):
    assert cli.main(["compare", DIGITS, "--methods", "static_1x,dense", "--seeds", "2", "--plan",
                     "--output", str(tmp_path / "x")]) == 0
    out = capsys.readouterr().out
    assert not (tmp_path / "x").exists() and "measured here" in out
    model = build_model("small_cnn", in_channels=1)
    dense = 3 * sum(module_flops(model, (1, 1, 8, 8)).values()) * 1280 * 30  # 40 batches of 32, 30 epochs
    assert re.search(rf"^paired-0\s+dense\s+-\s+2\s+30\s+{re.escape(f'{dense:.3g}')}\s+1.00x$", out, re.M), out
    static = re.search(r"^paired-0\s+static_1x\s+0.9\s+2\s+30\s+(\S+)\s", out, re.M).group(1)
    run = tmp_path / "static"
    assert cli.main(["train", DIGITS, "sparsity.method=static", "train.stop_after=1", "--output", str(run)]) == 0
    assert float(static) == pytest.approx(runfolder.last_epoch(run)["train_flops"] * 30, rel=5e-3)  # 3 digits
