"""The report's dynamics figure, from run folders: DSR's threshold and K, turnover, per-layer density."""

from pathlib import Path

from dsr_tune import runfolder
from dsr_tune.sweep.report import dynamics, stats


def _run(folder: Path, method: str, threshold: bool) -> None:
    folder.mkdir(parents=True)
    (folder / runfolder.CONFIG).write_text(f"sparsity: {{method: {method}, sparsity: 0.9, dsr: {{target_pruned: 30}}}}\n")
    records = []
    for step in (10, 20, 30):
        r = {"kind": "realloc", "step": step, "epoch": step // 20, "pruned": step, "grown": step,
             "layers": {"a": {"nonzero": 200}, "b": {"nonzero": 100}}}
        if threshold:
            r["threshold"] = 1e-3 * step
        records.append(r)
    records += [{"kind": "epoch", "epoch": e, "lr": 0.1, "test_acc": 0.9, "density": {"a": 0.1 + e / 100, "b": 0.1}}
                for e in range(2)]
    runfolder.write_records(folder / runfolder.METRICS, records)


def test_turnover_is_pruned_over_the_kept_budget():
    assert dynamics.turnover({"pruned": 30, "layers": {"a": {"nonzero": 200}, "b": {"nonzero": 100}}}) == 0.1
    assert dynamics.turnover({"pruned": 3, "layers": {}}) is None


def test_the_figure_draws_every_dynamic_row_from_its_first_seed(tmp_path):
    paired = tmp_path / runfolder.RUNS / "paired"
    _run(paired / "dsr" / "s0.9" / "seed1", "dsr", threshold=True)
    _run(paired / "set" / "s0.9" / "seed1", "set", threshold=False)
    _run(paired / "dsr_stop_2" / "s0.9" / "seed1", "dsr", threshold=True)
    lines = [stats.Line(m, 0.9, {1: 0.9, 2: 0.91}, 100, 10) for m in ("dsr", "set", "dsr_stop:2", "static_1x")]
    table = stats.Table("t", "val_acc", "max", sections={0.9: lines})
    assert set(dynamics._runs(tmp_path, table, 0.9)) == {"dsr", "set", "dsr_stop:2"}  # static moves nothing
    written = dynamics.plot(tmp_path, table)
    assert written == [tmp_path / "report_dynamics_s0.9.png"] and written[0].stat().st_size > 20_000
    assert not list(tmp_path.glob(".*tmp-*"))  # written through the atomic write


def test_no_dynamic_row_no_figure(tmp_path):
    table = stats.Table("t", "val_acc", "max", sections={0.9: [stats.Line("static_1x", 0.9, {1: 0.9}, 100, 10)]})
    assert dynamics.plot(tmp_path, table) == []
