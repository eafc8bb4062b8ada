"""Everything the first GPU must measure and check, in one command, with no download.

    python3 benchmarks/gpu_check.py --out OUT                                 # one GPU, <= 480 s in all
    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick --out OUT   # here: a few minutes

Sections, in this order (the most wanted figures first; ``--sections a,b`` picks some):

    resnet50          training img/s, ResNet-50 at batch 256, 224 px, bf16 autocast, channels_last,
                      SGD Nesterov: dense vs DSR at sparsity 0.9 (masks after every step, one
                      reallocation inside the timed window, the paper's period amortised)
    resnet50_compile  the same under torch.compile (inductor), compile time apart, compiled/eager
    wrn               the same as resnet50 for WRN-28-2 at batch 128, 32 px
    masks             one Masking.apply() and one DSR reallocation against one masked compare pass
                      over the same weights, the sort-based reallocation of bench_dsr.py, one DeepR step
    data              decode + random-resized crop 224 + flip of generated ImageNet-sized JPEGs: the
                      package's PIL loader with N processes vs decoding on the device (torchvision.io
                      and the package's data.decode=gpu path); loader cores per GPU for 3,000 img/s
    train             the real `dsr-tune train` CLI on those JPEGs (252 steps, bf16, channels_last,
                      DSR) and a short second run with train.compile=true and data.decode=gpu; both
                      checkpoints checked on the device; the same checks in-process after 7 steps
    tests             pytest -m cuda tests/test_cuda.py as a subprocess: passed / failed / skipped
    wrn_resident      the package's trainer on 50,000 generated CIFAR-shaped images kept on the device
                      (data.resident): WRN-28-2 epoch time at batch 128, bf16, dense vs DSR at 0.9
    wrn_packed        4 WRN-28-2 trials packed on the GPU (one process each, memory capped at 1/4)
                      against 1 alone: total images/s (search.trials_per_gpu)
    wrn_compile       wrn under torch.compile

Each section runs in its own child process (its own CUDA context), so a segfault or a sticky
CUDA error costs that section only: it is recorded (``crashed``, with the figures it had
written) and the next one starts fresh. ``--budget-s`` (default 480; 1200 with --quick) bounds
the whole run, Python's start-up included: each section gets its share plus what the ones
before it left unused, the shares of those after it stay reserved, and a child past its limit
is stopped (SIGTERM, then SIGKILL). OUT receives gpu_check.json, gpu_check.md and the logs of
the subprocesses, rewritten after every section, so a run cut short keeps what it measured.
This file needs only the standard library; the sections (gpu_check_*.py) import torch.
"""

from __future__ import annotations

import os
import time


def _process_age() -> float:
    """Seconds since this process started (Linux /proc), so a budget counts Python's start-up."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        age = uptime - ticks / os.sysconf("SC_CLK_TCK")
        return age if 0.0 <= age < 600 else 0.0
    except (OSError, ValueError, IndexError):
        return 0.0


T0 = time.monotonic() - _process_age()  # before any other import

import argparse  # noqa: E402
import contextlib  # noqa: E402
import faulthandler  # noqa: E402
import importlib  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):  # runs from a plain checkout (the GPU machine has no install of it)
    if _p not in sys.path:
        sys.path.insert(0, _p)

# name: ("module:function", share of the budget), in run order; at 480 s: 43, 130, 24, 19, 38, 91, 43, 34, 34, 24 s
SECTIONS = {
    "resnet50": ("gpu_check_models:section_resnet50", 0.09),
    "resnet50_compile": ("gpu_check_models:section_resnet50_compile", 0.27),
    "wrn": ("gpu_check_models:section_wrn", 0.05),
    "masks": ("gpu_check_models:section_masks", 0.04),
    "data": ("gpu_check_data:section_data", 0.08),
    "train": ("gpu_check_train:section_train", 0.19),
    "tests": ("gpu_check_train:section_tests", 0.09),
    "wrn_resident": ("gpu_check_sweep:section_wrn_resident", 0.07),
    "wrn_packed": ("gpu_check_sweep:section_wrn_packed", 0.07),
    "wrn_compile": ("gpu_check_models:section_wrn_compile", 0.05),
}
# they load dsr_tune.config; the others only models and masks
NEEDS_PYDANTIC = ("data", "train", "tests", "wrn_resident")
BUDGET_S, QUICK_BUDGET_S = 480.0, 1200.0
MIN_SECTION_S = 5.0   # a section that would get less is skipped
KILL_GRACE_S = 3.0    # SIGTERM at a child's limit, SIGKILL this much later
RESERVE_S = 5.0       # kept at the end of the budget: the last kill's grace and the report
OK_STATUSES = ("ok", "unavailable", "skipped")

from gpu_check_report import Report, Result, cross_metrics  # noqa: E402


# ---------------------------------------------------------------- a section's own process


class SectionTimeout(BaseException):
    """Not an Exception: no ``except Exception`` on the way up swallows it."""


@contextlib.contextmanager
def alarm(seconds: float):
    """Raise SectionTimeout in the main thread after ``seconds`` (a subprocess being waited
    for is killed by subprocess.run as the exception passes)."""
    def fire(*_):
        raise SectionTimeout(f"stopped at the section's limit ({seconds:.0f} s after its start)")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Ctx:
    """What a section gets. ``device`` and ``sizes`` import torch on first use, so a section
    that needs neither starts in milliseconds."""

    def __init__(self, device: str, quick: bool, out: Path, work: Path, deadline: float):
        self.device_arg, self.quick, self.out, self.work, self.deadline = device, quick, out, work, deadline
        self._device = None

    def left(self) -> float:
        """Seconds the section should still plan for (its limit less a grace to wrap up)."""
        return self.deadline - time.monotonic()

    @property
    def device(self):
        if self._device is None:
            from gpu_check_lib import setup_device

            self._device = setup_device(self.device_arg)
        return self._device

    @property
    def sizes(self):
        from gpu_check_lib import sizes

        return sizes(self.quick)


def _term(*_):
    raise KeyboardInterrupt("SIGTERM")


def child_main(args) -> None:
    """Run one section in this process and write its result (after every metric, and at the
    end), then leave at once."""
    faulthandler.enable()  # a segfault prints the Python stack (into stdout.log)
    signal.signal(signal.SIGTERM, _term)
    for extra in args.path:
        sys.path.insert(0, extra)
    res = Result(args.child, args.result)
    res.running, res.limit_s = True, args.limit_s
    margin = min(KILL_GRACE_S, 0.1 * args.limit_s)  # the alarm fires this much before the parent's SIGTERM
    ctx = Ctx(args.device, args.quick, args.out, args.work,
              deadline=T0 + args.limit_s - margin - min(20.0, 0.15 * args.limit_s))
    res.save()
    try:
        with alarm(T0 + args.limit_s - margin - time.monotonic()):
            module, fn = args.fn.split(":")
            getattr(importlib.import_module(module), fn)(ctx, res)
    except SectionTimeout as exc:
        res.status, res.error = "timeout", f"SectionTimeout: {exc}"
    except subprocess.TimeoutExpired as exc:  # a subprocess given the time left
        res.status, res.error = "timeout", f"TimeoutExpired: {str(exc)[-300:]}"
    except KeyboardInterrupt as exc:
        res.status, res.error = "interrupted", f"interrupted by {exc or 'Ctrl-C'}"
    except Exception as exc:
        oom = type(exc).__name__ == "OutOfMemoryError"  # torch.cuda.OutOfMemoryError
        text = str(exc).strip().splitlines()
        res.status, res.error = ("oom" if oom else "error"), f"{type(exc).__name__}: {text[0] if text else ''}"[:500]
        res.details["traceback"] = traceback.format_exc()[-4000:]
    finally:
        res.running, res.wall_s = False, time.monotonic() - T0
        res.save()  # complete: whatever happens from here on, the runner keeps this
        if ctx._device is not None:
            with contextlib.suppress(Exception):
                from gpu_check_lib import torch_meta

                res.meta = torch_meta(ctx._device, ctx.quick)
                res.save()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # no interpreter teardown: a CUDA context or loader thread cannot hang or crash the exit


# ---------------------------------------------------------------- the runner


def run_sections(names: list[str], table: dict, report: Report, budget_s: float, *, device: str, quick: bool,
                 work: Path, start: float | None = None, path: tuple = ()) -> None:
    """Each section in its own process, within its share of the budget plus whatever the
    sections before it left unused; the shares of those after it stay reserved."""
    start = time.monotonic() if start is None else start
    end = start + budget_s - RESERVE_S
    total = sum(table[n][1] for n in names)
    for i, name in enumerate(names):
        now = time.monotonic()
        remaining = end - now
        later = budget_s * sum(table[n][1] for n in names[i + 1:]) / total
        limit = min(remaining, max(budget_s * table[name][1] / total, remaining - later))
        if name in NEEDS_PYDANTIC and report.meta.get("pydantic") == "missing":
            res = report.sections[name] = Result(name)
            res.status, res.error = "error", ("not run: pydantic is not importable (the wheels were not installed: "
                                              "docs/gpu.md); this section loads dsr_tune.config")
            print(f"\n== {name}: {res.error}", flush=True)
            report.write()
            continue
        if limit < MIN_SECTION_S:
            res = report.sections[name] = Result(name)
            res.status, res.limit_s = "skipped", max(limit, 0.0)
            res.note(f"out of time: {max(remaining, 0):.0f} s of --budget-s {budget_s:g} left")
            report.write()
            continue
        print(f"\n== {name} (up to {limit:.0f} s, in its own process)", flush=True)
        try:
            res = run_child(name, table[name][0], limit, report, device=device, quick=quick, work=work, path=path)
        finally:
            cross_metrics(report)
            report.write()
        print(f"== {name}: {res.status} in {res.wall_s:.1f} s", flush=True)


def run_child(name: str, fn: str, limit: float, report: Report, *, device: str, quick: bool, work: Path,
              path: tuple) -> Result:
    result_file = work / f"section_{name}.json"
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--fn", fn, "--limit-s", f"{limit:.3f}",
           "--device", device, "--out", str(report.out), "--work", str(work), "--result", str(result_file)]
    cmd += ["--quick"] if quick else []
    for p in path:
        cmd += ["--path", str(p)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)  # its own group: killed as one
    cause = None
    try:
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            cause = "timeout"
            rc = _stop(proc)
    except KeyboardInterrupt:
        cause = "interrupted"
        rc = _stop(proc)
        raise
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # what it left behind: loader workers, compile workers
        res, running = Result.load(name, result_file)
        res.limit_s, res.wall_s = limit, time.monotonic() - t
        if cause == "timeout" and not running:  # its result was complete: only the exit hung
            res.note(f"the section's process was still there at its limit of {limit:.0f} s after writing its result: killed")
        elif cause == "timeout":
            res.status, res.error = "timeout", f"stopped at the section's limit of {limit:.0f} s (SIGTERM, then SIGKILL)"
        elif cause == "interrupted":
            res.status, res.error = "interrupted", "interrupted by SIGTERM (the outer timeout?)"
        elif running or rc != 0:
            how = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
            if running:  # it died inside the section: a segfault, an abort, os._exit
                res.status, res.error = "crashed", f"the section's process died with {how}; figures before it are kept"
            else:  # the result is complete; the process failed on its way out
                res.note(f"the section's process exited with {how} after writing its result")
        for k, v in res.meta.items():
            report.meta.setdefault(k, v)
        report.sections[name] = res
    return res


def _stop(proc: subprocess.Popen) -> int:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def base_meta(args, names: list[str], budget_s: float) -> dict:
    """The report's header from this process (standard library only); the device, torch and
    CUDA versions come from the first section's process."""
    def run(cmd, timeout):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout).stdout.strip()
        return ""

    try:  # the train, data and tests sections need it (dsr_tune.config); the GPU image lacks it
        import pydantic

        pyd = pydantic.VERSION
    except Exception as exc:  # noqa: BLE001 - any failure means those sections cannot run
        pyd = "missing"
        print(f"gpu_check: import pydantic: {type(exc).__name__}: {exc}", flush=True)
    return {
        "device": args.device, "driver": (run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], 20)
                                          if shutil.which("nvidia-smi") else "") or "n/a",
        "git": run(["git", "rev-parse", "--short", "HEAD"], 10) or "unknown",
        "python": platform.python_version(), "platform": platform.platform(),
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "pydantic": pyd,
        "command": shlex.join([sys.executable, *sys.argv]), "mode": "quick" if args.quick else "full",
        "budget_s": budget_s, "sections": names, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "how": ("each section in its own process; times are medians of per-step CUDA events (perf_counter on "
                "CPU) after warm-up steps; every ratio compares two things measured in this run; DSR/dense steps "
                "alternate; compile time is never in img/s; the budget counts Python's start-up"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="folder for gpu_check.json, gpu_check.md and logs")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cuda, cuda:N or cpu")
    p.add_argument("--quick", action="store_true", help="small sizes, a generous budget (for CPU and CI)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--budget-s", type=float, default=None,
                   help=f"seconds for the whole run, start-up included (default {BUDGET_S:g}; {QUICK_BUDGET_S:g} with --quick)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (JPEG tree, the CLI's runs)")
    for hidden in ("--child", "--fn", "--work", "--result"):  # a section's own process
        p.add_argument(hidden, help=argparse.SUPPRESS, type=Path if hidden in ("--work", "--result") else str)
    p.add_argument("--limit-s", type=float, help=argparse.SUPPRESS)
    p.add_argument("--path", action="append", default=[], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child_main(args)  # does not return
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown or not names:
        p.error(f"--sections: unknown {unknown}; allowed: {', '.join(SECTIONS)}")
    names = [s for s in SECTIONS if s in names]  # the canonical order
    budget_s = args.budget_s or (QUICK_BUDGET_S if args.quick else BUDGET_S)
    report = Report(args.out, base_meta(args, names, budget_s), start=T0)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    print(f"gpu_check: sections {','.join(names)}; budget {budget_s:g} s from the process start "
          f"({time.monotonic() - T0:.1f} s ago); out {args.out}; pydantic {report.meta['pydantic']}", flush=True)
    if report.meta["pydantic"] == "missing":
        print(f"gpu_check: WARNING: pydantic is not importable: {', '.join(NEEDS_PYDANTIC)} will fail "
              "(install the wheels, docs/gpu.md); the other sections run", flush=True)
    signal.signal(signal.SIGTERM, _term)  # an outer `timeout` still leaves the report, marked
    try:
        run_sections(names, SECTIONS, report, budget_s, device=args.device, quick=args.quick, work=work, start=T0)
    except KeyboardInterrupt:
        report.write()
        return 130
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report.write()
    bad = {n: r.status for n, r in report.sections.items() if r.status not in OK_STATUSES}
    print(f"\ngpu_check: {report.meta['wall_s']} s of {budget_s:g}; wrote {args.out / 'gpu_check.json'} and "
          "gpu_check.md" + (f"; not ok: {bad}" if bad else "; every section ok"), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
