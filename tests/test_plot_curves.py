"""scripts/plot_curves.py: the learning curves of RESULTS.md, averaged over a row's seeds."""

import json
from pathlib import Path

import pytest

from conftest import ROOT, load_script

SCRIPT = ROOT / "scripts" / "plot_curves.py"


@pytest.fixture(scope="module")
def curves():
    return load_script(SCRIPT)


def _run(folder: Path, accs: list[float], lrs: list[float]) -> Path:
    folder.mkdir(parents=True)
    lines = [{"kind": "realloc", "step": 3, "epoch": 0}]
    lines += [{"kind": "epoch", "epoch": e, "lr": lr, "train_acc": a, "val_acc": a - 0.01, "test_acc": a - 0.02}
              for e, (a, lr) in enumerate(zip(accs, lrs))]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder


def test_a_folder_of_seeds_is_averaged_with_its_band(curves, tmp_path, capsys):
    row = tmp_path / "dsr" / "s0.9"
    _run(row / "seed1", [0.5, 0.9], [0.1, 0.02])
    _run(row / "seed2", [0.7, 0.8], [0.1, 0.02])
    out = tmp_path / "c.png"
    assert curves.main([f"dsr={row}", str(row / "seed1"), "--out", str(out), "--table"]) == 0
    mean = curves.mean_curve(curves.runs_of(row))
    assert [r["n"] for r in mean] == [2, 2]
    assert mean[0]["train_acc"] == pytest.approx(0.6) and mean[1]["test_acc"] == pytest.approx(0.83)
    assert (mean[0]["train_acc_lo"], mean[0]["train_acc_hi"]) == (0.5, 0.7)
    text = capsys.readouterr().out
    assert "dsr (2 run(s), mean)" in text and "| 1 | 0.1 | 60.00 | 59.00 | 58.00 |" in text
    assert "s0.9/seed1 (1 run(s), mean)" in text and "| 2 | 0.02 | 90.00 | 89.00 | 88.00 |" in text
    assert out.stat().st_size > 10_000


def test_a_folder_without_runs_is_refused(curves, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert curves.main([str(tmp_path / "empty")]) == 2
    assert "no per-epoch records" in capsys.readouterr().err
