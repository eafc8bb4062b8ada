"""scripts/sparsity_curve.py: reports pooled by sparsity, the table's numbers, the figure, bad input."""

import csv

import pytest

from conftest import ROOT, load_script

from dsr_tune.sweep.report.render import CSV_COLUMNS


@pytest.fixture(scope="module")
def sc():
    return load_script(ROOT / "scripts" / "sparsity_curve.py")


def _report(path, rows):
    """A report.csv with the given (sparsity, method, mean, diff, diff_ci, nonzero, flops_x) lines."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "report.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for s, method, mean, diff, dci, nonzero, flops in rows:
            line = {k: "" for k in CSV_COLUMNS}
            line.update(sparsity=s, method=method, mean=mean, n=5, ci_low=mean - 0.01, ci_high=mean + 0.01,
                        nonzero_params=nonzero, train_flops_x=flops, tuned="True")
            if diff is not None:
                line.update(diff_to_dsr=diff, diff_ci_low=dci[0] if dci else "", diff_ci_high=dci[1] if dci else "")
            w.writerow(line)
    return path


def test_reports_pool_by_sparsity_and_the_table_says_what_each_row_is(sc, tmp_path):
    a = _report(tmp_path / "a", [(0.9, "dsr", 0.98, None, None, 1400, 0.2),
                                 (0.9, "static_2x", 0.975, -0.005, (-0.009, -0.001), 1400, 0.4),
                                 (0.9, "dense", 0.99, 0.01, (0.0, 0.02), 14000, 1.0)])
    b = _report(tmp_path / "b", [(0.9, "dsr", 0.5, None, None, 1400, 0.2),  # a sparsity a holds: a's wins
                                 (0.99, "dsr", 0.90, None, None, 140, 0.05),
                                 (0.99, "static_cm", 0.91, 0.01, (-0.002, 0.022), 140, 0.05)])
    curve = sc.read([str(a), str(b / "report.csv")])
    assert list(curve) == [0.9, 0.99]
    assert curve[0.9]["dsr"]["mean"] == 0.98 and "static_cm" in curve[0.99]
    text = sc.table(curve)
    lines = text.splitlines()
    assert len(lines) == 4 and lines[2].startswith("| 0.9 | 1,400 |") and lines[3].startswith("| 0.99 | 140 |")
    assert "97.50 / -0.50 [-0.90, -0.10] / 0.4x" in lines[2]  # resolved: no ~0
    assert "91.00 / +1.00 [-0.20, +2.20] ~0 / 0.05x" in lines[3]  # the interval holds 0
    assert "98.00 / reference / 0.2x" in lines[2]


def test_the_figure_is_written_and_bad_input_is_one_line(sc, tmp_path, capsys):
    a = _report(tmp_path / "a", [(0.8, "dsr", 0.98, None, None, 2800, 0.3),
                                 (0.9, "dsr", 0.97, None, None, 1400, 0.2),
                                 (0.9, "thin_dense_1x", 0.96, -0.01, (-0.02, 0.0), 1400, 0.1)])
    out = tmp_path / "fig" / "curve.png"
    assert sc.main([str(a), "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000
    assert sc.main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing: no report.csv" in err[0]
