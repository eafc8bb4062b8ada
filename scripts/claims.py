"""The paper's claims, judged from a comparison's report.csv: one verdict per claim and sparsity.

    .venv/bin/python scripts/claims.py runs/sweeps/mnist5k            # a sweep folder, or its report.csv

Every verdict reads the seed-paired difference of a row to DSR (row - DSR, test
accuracy, its 95% Student-t interval over the seeds both have), as written by
``dsr-tune report`` / ``dsr-tune compare``. The rules, fixed before the numbers
were seen:

- "DSR beats X" (static 2x, thin dense 2x, SET, DeepR; static / thin dense at
  1x as the control for training length): **confirmed** when the interval of
  X - DSR lies below 0, **refuted** when it lies above 0, else **not resolved**
  at this n (the sign of the mean is given for what it is worth).
- "DSR matches GMP" (the paper: DSR at or above compressed sparse): refuted when
  GMP - DSR lies above 0, confirmed when the interval lies within +-MARGIN or
  below 0, else not resolved.
- The workshop paper's "no static re-training of DSR's structure reaches DSR"
  (final_reinit, final_init, and the random control): confirmed when every
  one's interval lies below 0; refuted when one of them is shown to be within
  MARGIN of DSR or above it (its interval's lower end above -MARGIN); else not
  resolved.
- "The structure is found early" (reallocation stopped at epoch E): confirmed
  when dsr_stop:E - DSR lies within +-MARGIN, refuted when it lies below 0,
  else not resolved.

MARGIN is 0.5 accuracy points (5 of 1,000 test images in the MNIST comparison).
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

MARGIN = 0.005  # accuracy as a fraction: 0.5 points


@dataclass
class Diff:
    row: str
    sparsity: float
    mean: float
    lo: float | None
    hi: float | None
    n: int

    def text(self) -> str:
        ci = f" [{100 * self.lo:+.2f}, {100 * self.hi:+.2f}]" if self.lo is not None else " (no interval)"
        return f"{self.row} {100 * self.mean:+.2f}{ci}, n = {self.n}"


def read(path: Path) -> dict[float, dict[str, Diff]]:
    """``{sparsity: {row: Diff}}`` from a report.csv (DSR's own row has no difference)."""
    path = path / "report.csv" if path.is_dir() else path
    out: dict[float, dict[str, Diff]] = {}
    for r in csv.DictReader(path.open()):
        if r["diff_to_dsr"] in ("", "None"):
            continue
        num = (lambda k: float(r[k]) if r[k] not in ("", "None") else None)
        out.setdefault(float(r["sparsity"]), {})[r["method"]] = Diff(
            r["method"], float(r["sparsity"]), float(r["diff_to_dsr"]), num("diff_ci_low"), num("diff_ci_high"),
            int(float(r["diff_n"] or 0)))
    return out


def _undecided(d: Diff) -> str | None:
    """Why ``d`` decides nothing: no interval (n = 1), or no spread (every paired difference
    equal: a zero-width t interval; the sign test that stands in needs n >= 6), else None."""
    if d.lo is None or d.hi is None:
        return "not resolved (n = 1)"
    if d.hi - d.lo < 1e-12 and (d.n < 6 or d.mean == 0):
        return "not resolved (no spread: every paired difference equal, n < 6)"
    return None


def _sign(d: Diff) -> str:
    return "the mean favours DSR" if d.mean < 0 else "the mean favours " + d.row if d.mean > 0 else "the mean is 0"


def beats(d: Diff) -> str:
    """DSR beats the row."""
    if _undecided(d):
        return _undecided(d)
    if d.hi < 0:
        return "confirmed"
    if d.lo > 0:
        return "refuted"
    return f"not resolved ({_sign(d)})"


def matches(d: Diff) -> str:
    """DSR at or above the row (GMP)."""
    if _undecided(d):
        return _undecided(d)
    if d.lo > 0:
        return "refuted"
    if d.hi < MARGIN:
        return "confirmed"
    return f"not resolved ({_sign(d)})"


def none_reach(ds: list[Diff]) -> str:
    """No static variant reaches DSR."""
    if any(_undecided(d) for d in ds):
        return next(_undecided(d) for d in ds if _undecided(d))
    if all(d.hi < 0 for d in ds):
        return "confirmed"
    close = [d.row for d in ds if d.lo > -MARGIN]
    if close:
        return f"refuted ({', '.join(close)} within {100 * MARGIN:g} point of DSR or above)"
    return "not resolved"


def early(d: Diff) -> str:
    """Stopping reallocation at E loses nothing."""
    if _undecided(d):
        return _undecided(d)
    if d.hi < 0:
        return "refuted"
    if -MARGIN < d.lo and d.hi < MARGIN:
        return "confirmed"
    return f"not resolved ({_sign(d)})"


CLAIMS = [  # (claim, rows, judge): a judge of one row, or of all the rows together
    ("DSR > static sparse at 2x the epochs (the paper's baseline)", ["static_2x"], beats),
    ("DSR > thin dense at 2x the epochs (the paper's baseline)", ["thin_dense_2x"], beats),
    ("DSR > static sparse at the same epochs (control: training length)", ["static_1x"], beats),
    ("DSR > thin dense at the same epochs (control: training length)", ["thin_dense_1x"], beats),
    ("DSR >= GMP, compressed sparse", ["gmp"], matches),
    ("DSR > SET", ["set"], beats),
    ("DSR > DeepR", ["deepr"], beats),
]


def verdicts(diffs: dict[float, dict[str, Diff]]) -> list[tuple[str, float, str, str]]:
    """``(claim, sparsity, the numbers, verdict)`` for every claim the report has rows for."""
    out = []
    for s, rows in sorted(diffs.items()):
        for claim, names, judge in CLAIMS:
            for name in names:
                if name in rows:
                    out.append((claim, s, rows[name].text(), judge(rows[name])))
        static = [rows[k] for k in ("final_reinit", "final_init", "random_control") if k in rows]
        if static:
            out.append(("no static re-training of DSR's structure reaches DSR (workshop paper)", s,
                        "; ".join(d.text() for d in static), none_reach(static)))
        for name in sorted((k for k in rows if k.startswith("dsr_stop:")), key=lambda k: int(k.split(":")[1])):
            out.append((f"the structure is found early: reallocation stopped at epoch {name.split(':')[1]}", s,
                        rows[name].text(), early(rows[name])))
    return out


def markdown(rows: list[tuple[str, float, str, str]]) -> str:
    lines = ["| claim | sparsity | row - DSR, test acc points (paired, 95% CI) | verdict |", "|---|---|---|---|"]
    lines += [f"| {c} | {s:g} | {numbers} | {v} |" for c, s, numbers, v in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", type=Path, help="a sweep or comparison folder, or its report.csv")
    args = p.parse_args(argv)
    path = args.report / "report.csv" if args.report.is_dir() else args.report
    if not path.is_file():
        print(f"claims.py: error: {path}: no report.csv (run dsr-tune report on the sweep first)", file=sys.stderr)
        return 2
    print(markdown(verdicts(read(path))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
