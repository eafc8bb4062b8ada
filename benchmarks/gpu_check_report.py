"""gpu_check's results and reports (standard library only): one section's Result, which a
section's process rewrites after every figure, and the JSON + Markdown report the runner
rewrites after every section."""

from __future__ import annotations

import json
import time
from pathlib import Path


class Result:
    """What one section found: positive numbers (metrics), pass/fail checks, notes. In a
    section's process it rewrites ``path`` after every change, so a crash keeps what came before."""

    def __init__(self, name: str, path: Path | None = None):
        self.name, self.path, self.status, self.error = name, path, "ok", None
        self.metrics: dict[str, float] = {}
        self.how: dict[str, str] = {}
        self.checks: dict[str, bool] = {}
        self.notes: list[str] = []
        self.details: dict = {}
        self.meta: dict = {}
        self.wall_s = 0.0
        self.limit_s = 0.0
        self.running = False

    def metric(self, key: str, value: float, how: str) -> None:
        self.metrics[key] = float(value)
        self.how[key] = how
        print(f"  {key:42s} {_fmt(value):>12s}   {how}", flush=True)
        self.save()

    def check(self, key: str, ok: bool, how: str) -> None:
        self.checks[key] = bool(ok)
        self.how[key] = how
        if not ok and self.status == "ok":
            self.status = "failed"
        print(f"  {key:42s} {'PASS' if ok else 'FAIL':>12s}   {how}", flush=True)
        self.save()

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)
        self.save()

    def as_dict(self) -> dict:
        return {"status": self.status, "error": self.error, "wall_s": round(self.wall_s, 2),
                "limit_s": round(self.limit_s, 1), "metrics": self.metrics, "checks": self.checks,
                "how": self.how, "notes": self.notes, "details": self.details}

    def save(self) -> None:
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"result": self.as_dict(), "running": self.running, "meta": self.meta},
                                      default=str))
            tmp.replace(self.path)

    @classmethod
    def load(cls, name: str, path: Path) -> tuple[Result, bool]:
        """(the result a section's process wrote, whether it was still running), or an empty one."""
        res = cls(name)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return res, True
        d = data["result"]
        res.status, res.error, res.metrics, res.checks = d["status"], d["error"], d["metrics"], d["checks"]
        res.how, res.notes, res.details, res.meta = d["how"], d["notes"], d["details"], data.get("meta", {})
        return res, data.get("running", True)


def _fmt(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if float(v).is_integer() and abs(v) >= 1:
        return f"{int(v):,}"
    return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.3g}"


class Report:
    def __init__(self, out: Path, meta: dict, start: float):
        self.out, self.meta, self.start, self.sections = out, meta, start, {}
        out.mkdir(parents=True, exist_ok=True)

    def write(self) -> None:
        self.meta["wall_s"] = round(time.monotonic() - self.start, 1)
        data = {"meta": self.meta, "sections": {n: r.as_dict() for n, r in self.sections.items()}}
        tmp = self.out / ".gpu_check.json.tmp"
        tmp.write_text(json.dumps(data, indent=2, default=str))
        tmp.replace(self.out / "gpu_check.json")
        (self.out / "gpu_check.md").write_text(markdown(data))


def headline(sections: dict) -> list[str]:
    """dense / DSR img/s and their ratio, eager and compiled, for both models."""
    rows = []
    for model in ("resnet50", "wrn"):
        eager = sections.get(model, {}).get("metrics", {})
        comp = sections.get(f"{model}_compile", {}).get("metrics", {})
        for tag, m, p in (("eager", eager, f"{model}_"), ("torch.compile", comp, f"compiled_{model}_")):
            if p + "dense_img_s" in m:
                rows.append(f"| {model} | {tag} | {_fmt(m[p + 'dense_img_s'])} | {_fmt(m.get(p + 'dsr_img_s', 'n/a'))} "
                            f"| {_fmt(m.get(p + 'dsr_over_dense', 'n/a'))} |")
    return (["| model | mode | dense img/s | DSR img/s | DSR / dense |", "|---|---|---|---|---|", *rows, ""]
            if rows else [])


def markdown(data: dict) -> str:
    m = {k: data["meta"].get(k, "?") for k in ("device_name", "command", "torch", "cuda", "cudnn", "torchvision",
                                               "python", "cpu_cores", "git", "mode", "budget_s", "wall_s",
                                               "started", "driver", "pydantic")}
    lines = [f"# gpu_check on {m['device_name']}", "",
             f"- command: `{m['command']}`",
             f"- torch {m['torch']}, CUDA {m['cuda']}, cuDNN {m['cudnn']}, torchvision {m['torchvision']}, "
             f"Python {m['python']}; driver {m['driver']}; {m['cpu_cores']} CPU cores; git {m['git']}; "
             f"pydantic {m['pydantic']}",
             f"- mode: {m['mode']}; budget {m['budget_s']} s (start-up included); total wall {m['wall_s']} s; "
             f"started {m['started']}",
             f"- how: {data['meta'].get('how', '')}", "", *headline(data["sections"]),
             "| section | status | wall s | limit s | error / notes |", "|---|---|---|---|---|"]
    for name, s in data["sections"].items():
        extra = s["error"] or "; ".join(s["notes"])
        lines.append(f"| {name} | {s['status']} | {s['wall_s']} | {s['limit_s']} | {extra.replace('|', '/')[:300]} |")
    for name, s in data["sections"].items():
        lines += ["", f"## {name}: {s['status']} ({s['wall_s']} s)", ""]
        if s["error"]:
            lines += [f"error: `{s['error']}`", ""]
        if s["metrics"] or s["checks"]:
            lines += ["| measure | value | how |", "|---|---|---|"]
            lines += [f"| {k} | {_fmt(v)} | {s['how'].get(k, '')} |" for k, v in s["metrics"].items()]
            lines += [f"| {k} | {'PASS' if v else '**FAIL**'} | {s['how'].get(k, '')} |" for k, v in s["checks"].items()]
        lines += [f"- {n}" for n in s["notes"]]
    return "\n".join(lines) + "\n"


def cross_metrics(report: Report) -> None:
    """Ratios between two sections' figures (each measured in its own process, same run)."""
    for model in ("resnet50", "wrn"):
        eager, comp = report.sections.get(model), report.sections.get(f"{model}_compile")
        e_key, c_key, key = f"{model}_dense_img_s", f"compiled_{model}_dense_img_s", f"compiled_{model}_dense_over_eager"
        if eager and comp and e_key in eager.metrics and c_key in comp.metrics:
            comp.metrics[key] = comp.metrics[c_key] / eager.metrics[e_key]
            comp.how[key] = f"dense img/s compiled / eager (the {model} section), both from this run"
