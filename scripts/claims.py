"""The paper's claims, judged from a comparison's report.csv: one verdict per claim and sparsity.

    .venv/bin/python scripts/claims.py runs/sweeps/mnist5k            # a sweep folder, or its report.csv

Every verdict reads the seed-paired difference of a row to DSR (row - DSR, test
accuracy, its 95% Student-t interval over the seeds both have), as written by
``dsr-tune report`` / ``dsr-tune compare``. The rules, fixed before the numbers
were seen:

- "DSR beats X" (static 2x, thin dense 2x, SET, DeepR; static / thin dense at
  1x as the control for training length; static / thin dense compute-matched,
  ``static_cm`` / ``thin_dense_cm``, trained for the epochs DSR's measured
  training FLOPs buy them: better at equal training compute): **confirmed** when
  the interval of X - DSR lies below 0, **refuted** when it lies above 0, else
  **not resolved** at this n (the sign of the mean is given for what it is worth).
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
No verdict below 3 seeds: the report gives no interval there.

**Holm.** Each verdict also comes adjusted for the number of claims judged at
once. A *family* is the claims of one sparsity (one section of the report's
table): the ones a reader takes in together. Each claim's p-value is that of
the test its verdict rests on: the report's two-sided paired t test of "no
difference" (``diff_p``) for a verdict against 0; for one against a margin,
twice the one-sided p of the bound, which is below 0.05 exactly when the 95%
interval clears it; the larger of the two for "within +-MARGIN" and for "every
one below 0"; with no spread, the sign test. Holm's step-down procedure
adjusts them within the family; a verdict stands after Holm when its adjusted
p is below 0.05, else it is "not resolved after Holm". Where the report lacks
them (older report.csv files), the p-values come from the interval, n and the
t distribution.

The compute-matched claims also name each row's training FLOPs as a multiple of
the dense run's (``train_flops_x``), so that "at equal training compute" can be
checked against the report.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import dataclass
from pathlib import Path

MARGIN = 0.005  # accuracy as a fraction: 0.5 points
ALPHA = 0.05
MIN_N = 3  # the report gives no interval below it


@dataclass
class Diff:
    row: str
    sparsity: float
    mean: float
    lo: float | None
    hi: float | None
    n: int
    sd: float | None = None        # of the paired differences
    p: float | None = None         # the report's p-value of "no difference" (paired t test)
    flops_x: float | None = None   # the row's training FLOPs, x the dense run's
    parent_x: float | None = None  # those of the run it starts from (GMP's dense run, the ablations' DSR run)
    dsr_flops_x: float | None = None

    def text(self) -> str:
        ci = f" [{100 * self.lo:+.2f}, {100 * self.hi:+.2f}]" if self.lo is not None else " (no interval)"
        parent = f" + {self.parent_x:.2f}x parent" if self.parent_x is not None else ""
        cost = (f"; training FLOPs {self.flops_x:.2f}x dense{parent}, DSR's {self.dsr_flops_x:.2f}x"
                if self.flops_x is not None and self.dsr_flops_x is not None else "")
        return f"{self.row} {100 * self.mean:+.2f}{ci}, n = {self.n}{cost}"

    def spread(self) -> float | None:
        """The paired differences' sd: the report's, else from the interval's half width."""
        if self.sd is not None:
            return self.sd
        if self.lo is None or self.hi is None or self.n < 2:
            return None
        from scipy.stats import t

        return (self.hi - self.lo) / 2 * math.sqrt(self.n) / t.ppf(1 - ALPHA / 2, self.n - 1)

    def _p(self, bound: float, side: float) -> float:
        """Twice the one-sided p of ``side * (difference - bound) < 0``."""
        sd = self.spread()
        if sd is None or self.n < MIN_N:
            return 1.0
        z = side * (self.mean - bound)
        if sd < 1e-12:  # no spread: n equal differences, the sign test
            return min(1.0, 2 * 0.5 ** self.n) if z < 0 else 1.0
        from scipy.stats import t

        return float(min(1.0, 2 * t.cdf(z / (sd / math.sqrt(self.n)), self.n - 1)))

    def p_below(self, bound: float) -> float:
        """Twice the one-sided p of "the difference is below ``bound``"."""
        return self._p(bound, 1.0)

    def p_above(self, bound: float) -> float:
        """Twice the one-sided p of "the difference is above ``bound``"."""
        return self._p(bound, -1.0)

    def p_zero(self) -> float:
        """The two-sided p of "no difference": the report's, else from the spread."""
        return self.p if self.p is not None else min(self.p_below(0.0), self.p_above(0.0))


def _num(r: dict, k: str) -> float | None:
    return float(r[k]) if r.get(k) not in (None, "", "None") else None


def read(path: Path) -> dict[float, dict[str, Diff]]:
    """``{sparsity: {row: Diff}}`` from a report.csv (DSR's own row has no difference)."""
    path = path / "report.csv" if path.is_dir() else path
    out: dict[float, dict[str, Diff]] = {}
    dsr_x: dict[float, float | None] = {}
    for r in csv.DictReader(path.open()):
        s = float(r["sparsity"])
        if r["method"] == "dsr":
            dsr_x[s] = _num(r, "train_flops_x")
        if r["diff_to_dsr"] in ("", "None"):
            continue
        out.setdefault(s, {})[r["method"]] = Diff(
            r["method"], s, float(r["diff_to_dsr"]), _num(r, "diff_ci_low"), _num(r, "diff_ci_high"),
            int(float(r["diff_n"] or 0)), _num(r, "diff_sd"), _num(r, "diff_p"), _num(r, "train_flops_x"),
            _num(r, "parent_train_flops_x"))
    for s, rows in out.items():
        for d in rows.values():
            d.dsr_flops_x = dsr_x.get(s)
    return out


def _undecided(d: Diff) -> str | None:
    """Why ``d`` decides nothing: no interval (n < 3), or no spread (every paired difference
    equal: a zero-width t interval; the sign test that stands in needs n >= 6), else None."""
    if d.lo is None or d.hi is None:
        return f"not resolved (n = {d.n}: no interval below n = {MIN_N})"
    if d.hi - d.lo < 1e-12 and (d.n < 6 or d.mean == 0):
        return "not resolved (no spread: every paired difference equal, n < 6)"
    return None


def _sign(d: Diff) -> str:
    return "the mean favours DSR" if d.mean < 0 else "the mean favours " + d.row if d.mean > 0 else "the mean is 0"


# each judge returns (verdict, the p-value of the test it rests on)


def beats(d: Diff) -> tuple[str, float]:
    """DSR beats the row."""
    if _undecided(d):
        return _undecided(d), 1.0
    if d.hi < 0:
        return "confirmed", d.p_zero()
    if d.lo > 0:
        return "refuted", d.p_zero()
    return f"not resolved ({_sign(d)})", d.p_zero()


def matches(d: Diff) -> tuple[str, float]:
    """DSR at or above the row (GMP)."""
    if _undecided(d):
        return _undecided(d), 1.0
    if d.lo > 0:
        return "refuted", d.p_zero()
    if d.hi < MARGIN:
        return "confirmed", d.p_below(MARGIN)
    return f"not resolved ({_sign(d)})", d.p_below(MARGIN)


def none_reach(ds: list[Diff]) -> tuple[str, float]:
    """No static variant reaches DSR."""
    if any(_undecided(d) for d in ds):
        return next(_undecided(d) for d in ds if _undecided(d)), 1.0
    if all(d.hi < 0 for d in ds):
        return "confirmed", max(d.p_below(0.0) for d in ds)  # every one shown below: the largest p
    close = [d for d in ds if d.lo > -MARGIN]
    if close:
        return (f"refuted ({', '.join(d.row for d in close)} within {100 * MARGIN:g} point of DSR or above)",
                min(d.p_above(-MARGIN) for d in close))
    return "not resolved", 1.0


def early(d: Diff) -> tuple[str, float]:
    """Stopping reallocation at E loses nothing."""
    if _undecided(d):
        return _undecided(d), 1.0
    if d.hi < 0:
        return "refuted", d.p_zero()
    if -MARGIN < d.lo and d.hi < MARGIN:
        return "confirmed", max(d.p_above(-MARGIN), d.p_below(MARGIN))
    return f"not resolved ({_sign(d)})", 1.0


CLAIMS = [  # (claim, rows, judge): a judge of one row, or of all the rows together
    ("DSR > static sparse at 2x the epochs (the paper's baseline)", ["static_2x"], beats),
    ("DSR > thin dense at 2x the epochs (the paper's baseline)", ["thin_dense_2x"], beats),
    ("DSR > static sparse at the same epochs (control: training length)", ["static_1x"], beats),
    ("DSR > thin dense at the same epochs (control: training length)", ["thin_dense_1x"], beats),
    ("DSR > static sparse at equal training compute (compute-matched)", ["static_cm"], beats),
    ("DSR > thin dense at equal training compute (compute-matched)", ["thin_dense_cm"], beats),
    ("DSR >= GMP, compressed sparse", ["gmp"], matches),
    ("DSR > SET", ["set"], beats),
    ("DSR > DeepR", ["deepr"], beats),
]


@dataclass
class Verdict:
    claim: str
    sparsity: float
    numbers: str
    verdict: str
    p: float                  # of the test the verdict rests on
    holm_p: float = 1.0       # Holm-adjusted within its family (its sparsity)

    @property
    def decided(self) -> bool:
        return self.verdict.startswith(("confirmed", "refuted"))

    @property
    def holm(self) -> str:
        """The verdict after Holm's adjustment within its family."""
        if not self.decided:
            return self.verdict
        if self.holm_p < ALPHA:
            return self.verdict
        return f"not resolved after Holm (adjusted p = {self.holm_p:.3g})"


def _family(rows: dict[str, Diff], s: float) -> list[Verdict]:
    out = []
    for claim, names, judge in CLAIMS:
        for name in names:
            if name in rows:
                out.append(Verdict(claim, s, rows[name].text(), *judge(rows[name])))
    static = [rows[k] for k in ("final_reinit", "final_init", "random_control") if k in rows]
    if static:
        out.append(Verdict("no static re-training of DSR's structure reaches DSR (workshop paper)", s,
                           "; ".join(d.text() for d in static), *none_reach(static)))
    for name in sorted((k for k in rows if k.startswith("dsr_stop:")), key=lambda k: int(k.split(":")[1])):
        out.append(Verdict(f"the structure is found early: reallocation stopped at epoch {name.split(':')[1]}", s,
                           rows[name].text(), *early(rows[name])))
    return out


def holm(family: list[Verdict]) -> None:
    """Holm's step-down adjustment of the family's p-values (in place): the i-th
    smallest of m times (m - i + 1), kept from decreasing, at most 1."""
    m, running = len(family), 0.0
    for i, v in enumerate(sorted(family, key=lambda v: v.p)):
        running = max(running, min(1.0, (m - i) * v.p))
        v.holm_p = running


def judged(diffs: dict[float, dict[str, Diff]]) -> list[Verdict]:
    """Every claim the report has rows for, per sparsity, each with its Holm-adjusted p."""
    out = []
    for s, rows in sorted(diffs.items()):
        family = _family(rows, s)
        holm(family)
        out += family
    return out


def verdicts(diffs: dict[float, dict[str, Diff]]) -> list[tuple[str, float, str, str]]:
    """``(claim, sparsity, the numbers, verdict)`` for every claim the report has rows for (unadjusted)."""
    return [(v.claim, v.sparsity, v.numbers, v.verdict) for v in judged(diffs)]


def markdown(rows: list[Verdict]) -> str:
    lines = ["| claim | sparsity | row - DSR, test acc points (paired, 95% CI) | verdict | p | "
             "Holm (family: its sparsity) |", "|---|---|---|---|---|---|"]
    lines += [f"| {v.claim} | {v.sparsity:g} | {v.numbers} | {v.verdict} | {v.p:.3g} | {v.holm} |" for v in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", type=Path, help="a sweep or comparison folder, or its report.csv")
    args = p.parse_args(argv)
    path = args.report / "report.csv" if args.report.is_dir() else args.report
    if not path.is_file():
        print(f"claims.py: error: {path}: no report.csv (run dsr-tune report on the sweep first)", file=sys.stderr)
        return 2
    print(markdown(judged(read(path))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
