"""scripts/claims.py: the verdicts of RESULTS.md, from a report.csv, by rules fixed in advance."""

import sys
from pathlib import Path

import pytest

from conftest import ROOT, load_script

SCRIPT = ROOT / "scripts" / "claims.py"
HEAD = "sparsity,method,epochs,tuned,n,mean,std,ci_low,ci_high,diff_to_dsr,diff_ci_low,diff_ci_high,diff_n,nonzero_params,seeds\n"


@pytest.fixture(scope="module")
def claims():
    yield load_script(SCRIPT)
    sys.modules.pop(SCRIPT.stem, None)


def _csv(tmp_path: Path, rows: dict[str, tuple]) -> Path:
    lines = ["0.9,dsr,10,True,5,0.95,0.01,0.94,0.96,,,,,100,1 2 3 4 5"]
    lines += [f"0.9,{m},10,True,{n},0.95,0.01,0.94,0.96,{d},{lo},{hi},{n},100,1 2 3 4 5" for m, (d, lo, hi, n) in rows.items()]
    (tmp_path / "report.csv").write_text(HEAD + "\n".join(lines) + "\n")
    return tmp_path


def test_each_rule_on_its_edges(claims, tmp_path):
    folder = _csv(tmp_path, {
        "static_2x": (-0.01, -0.02, -0.001, 5),        # below 0: DSR beats it
        "thin_dense_2x": (0.02, 0.01, 0.03, 5),        # above 0: refuted
        "static_1x": (0.001, -0.004, 0.006, 5),        # contains 0
        "set": (0.003, 0.003, 0.003, 5),               # no spread at n = 5: the sign test cannot decide
        "gmp": (0.001, -0.003, 0.004, 5),              # within the margin: DSR matches GMP
        "final_reinit": (-0.02, -0.03, -0.01, 5),
        "final_init": (-0.001, -0.004, 0.002, 5),      # shown within 0.5 point of DSR
        "random_control": (-0.03, -0.04, -0.02, 5),
        "dsr_stop:2": (-0.02, -0.03, -0.01, 5),        # stopping early loses accuracy
        "dsr_stop:5": (0.0, -0.004, 0.004, 5),         # within +-0.5 point: found early
    })
    got = {(c, s): v for c, s, _, v in claims.verdicts(claims.read(folder))}
    v = {c.split(" (")[0].split(":")[0]: verdict for (c, _), verdict in got.items()}
    assert v["DSR > static sparse at 2x the epochs"] == "confirmed"
    assert v["DSR > thin dense at 2x the epochs"] == "refuted"
    assert v["DSR > static sparse at the same epochs"] == "not resolved (the mean favours static_1x)"
    assert v["DSR > SET"].startswith("not resolved (no spread")
    assert v["DSR >= GMP, compressed sparse"] == "confirmed"
    assert v["no static re-training of DSR's structure reaches DSR"].startswith("refuted (final_init within")
    assert got[("the structure is found early: reallocation stopped at epoch 2", 0.9)] == "refuted"
    assert got[("the structure is found early: reallocation stopped at epoch 5", 0.9)] == "confirmed"
    assert claims.main([str(folder)]) == 0


def test_all_static_variants_below_dsr_confirm_the_workshop_claim(claims, tmp_path):
    folder = _csv(tmp_path, {k: (-0.02, -0.03, -0.01, 5) for k in ("final_reinit", "final_init", "random_control")})
    (claim, _, numbers, verdict), = claims.verdicts(claims.read(folder))
    assert claim.startswith("no static re-training") and verdict == "confirmed" and numbers.count("n = 5") == 3


def test_a_folder_without_a_report_is_refused(claims, tmp_path, capsys):
    assert claims.main([str(tmp_path)]) == 2
    assert "no report.csv" in capsys.readouterr().err


def test_holm_adjusts_each_sparsitys_family_beside_the_unadjusted_verdict(claims, tmp_path):
    head = HEAD.strip() + ",diff_sd,diff_p,train_flops_x,parent_train_flops_x\n"
    lines = ["0.9,dsr,10,True,5,0.95,0.01,0.94,0.96,,,,,100,1 2 3 4 5,,,0.12,"]
    # three claims of one sparsity, each below 0 on its own (p 0.01, 0.03, 0.04): Holm keeps the first
    # (3 x 0.01 = 0.03) and drops the others (2 x 0.03 = 0.06; the third is held at 0.06 too)
    for m, p in (("static_2x", 0.01), ("static_cm", 0.03), ("thin_dense_cm", 0.04)):
        lines.append(f"0.9,{m},10,True,5,0.95,0.01,0.94,0.96,-0.01,-0.02,-0.001,5,100,1 2 3 4 5,0.008,{p},0.12,")
    lines.append("0.8,static_2x,10,True,5,0.95,0.01,0.94,0.96,-0.01,-0.02,-0.001,5,100,1 2 3 4 5,0.008,0.04,0.2,")
    (tmp_path / "report.csv").write_text(head + "\n".join(lines) + "\n")
    got = {(v.claim.split(" (")[0], v.sparsity): v for v in claims.judged(claims.read(tmp_path))}
    assert all(v.verdict == "confirmed" for v in got.values())
    assert got[("DSR > static sparse at 2x the epochs", 0.9)].holm == "confirmed"
    assert got[("DSR > static sparse at equal training compute", 0.9)].holm_p == pytest.approx(0.06)
    assert got[("DSR > thin dense at equal training compute", 0.9)].holm.startswith("not resolved after Holm")
    assert got[("DSR > static sparse at 2x the epochs", 0.8)].holm == "confirmed"  # a family of one: 0.04
    assert "training FLOPs 0.12x dense, DSR's 0.12x" in got[("DSR > static sparse at equal training compute", 0.9)].numbers
    claims.main([str(tmp_path)])


def test_p_values_from_an_older_report_come_from_its_interval(claims, tmp_path):
    from scipy.stats import t

    # n = 5, mean -1 point, interval half width 0.8: t = 1 / (0.8 / t(0.975, 4)), two-sided
    folder = _csv(tmp_path, {"static_2x": (-0.01, -0.018, -0.002, 5)})
    (v,) = claims.judged(claims.read(folder))
    assert v.verdict == "confirmed" and v.p == pytest.approx(2 * t.sf(0.01 / (0.008 / t.ppf(0.975, 4)), 4))
    assert v.p < 0.05 and v.holm == "confirmed"
