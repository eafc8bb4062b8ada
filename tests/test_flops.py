"""FLOPs of every run, checked independently: the forward count against
torch's FlopCounterMode, a run's recorded total against a recount written
here from its records, every registered method's total against what its
definition implies, and the totals of a resumed or two-worker run."""

import json
import socket
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dsr_tune import config as C
from dsr_tune import methods
from dsr_tune.models import build_model
from dsr_tune.runfolder import costs, read_records
from dsr_tune.train import train
from dsr_tune.train.flops import dense_flops, forward_flops, layer_costs
from dsr_tune.train.setup import build_run_model

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs" / "digits.yaml")
BATCH = 64  # 20 steps an epoch (1,294 training digits, the last partial batch dropped)
SHORT = [f"data.batch_size={BATCH}", "train.epochs=2", "optim.milestones=[]", "train.threads=1",
         "sparsity.period_schedule=[[0, 5]]", "sparsity.stop_epoch=2", "sparsity.dsr.target_pruned=100"]
#: what each method's definition says of the dense weight gradient of its sparse tensors
DENSE_GRADIENT = {"rigl": "at its updates", "snfs": "every step"}


def module_flops(model: torch.nn.Module, shape) -> dict[str, int]:
    """FlopCounterMode's forward FLOPs of one input, per conv / linear weight name."""
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(shape))
    root = type(model).__name__
    per = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            per[f"{name}.weight"] = sum(counter.get_flop_counts()[f"{root}.{name}"].values())
    assert sum(per.values()) == counter.get_total_flops()  # nothing counted outside convs and linears
    return per


@pytest.mark.parametrize("name,kwargs,shape", [
    ("small_cnn", {"in_channels": 1}, (1, 1, 8, 8)),
    ("wrn", {"depth": 10, "width": 1.0}, (1, 3, 32, 32)),
    ("resnet50", {"width": 0.25, "num_classes": 100}, (1, 3, 32, 32)),
])
def test_forward_count_at_density_one_is_flop_counter_modes(name, kwargs, shape):
    model = build_model(name, **kwargs)
    with FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(shape))
    ours = layer_costs(model, shape)
    assert forward_flops(ours) == counter.get_total_flops() > 0
    assert model.training is False  # eval() above; layer_costs put it back as it found it
    model.train()
    layer_costs(model, shape)
    assert model.training
    # layer by layer too, and the meta-device count of a config's dense model
    per = module_flops(model, shape)
    assert {k: 2 * u * n for k, (u, n) in ours.items()} == per
    cfg = C.load(DIGITS, [f"model.name={name}", f"model.width={kwargs.get('width', 1.0)}",
                          f"model.depth={kwargs.get('depth', 28)}", "data.name=synthetic",
                          f"data.image_size={shape[-1]}"])
    assert dense_flops(cfg, kwargs.get("num_classes", 10), shape[1]) == counter.get_total_flops()


def _steps_of(records):
    return [r["step"] for r in records if r["kind"] == "epoch"]


def recount(run_dir: Path, dense_gradient: str | None = None) -> tuple[list[int], list[int]]:
    """(cumulative training FLOPs per epoch, forward FLOPs per image per epoch),
    recomputed from the run folder: FlopCounterMode's per-layer counts of the
    run's own model, the initial masks in init.pt, and the per-tensor non-zero
    counts after each reallocation (a budget-changing schedule's records have
    none: its epoch record's densities, one such change per epoch). Each step
    costs its BATCH images 3 forwards at the masks it trained with, plus the
    dense weight gradient of the sparse tensors where the method needs it."""
    cfg = C.load(run_dir / "config.yaml")
    model = build_run_model(cfg, 10, 1, resuming=True)
    per = module_flops(model, (1, 1, 8, 8))
    records = read_records(run_dir)
    epochs = [r for r in records if r["kind"] == "epoch"]
    init = torch.load(run_dir / "init.pt", weights_only=True)["masking"]
    masks = init["masks"] if init else {}
    numel = {n: m.numel() for n, m in masks.items()}
    active = {n: int(m.sum()) for n, m in masks.items()}
    after = {}  # step -> active counts from the next step on
    for r in records:
        if r["kind"] != "realloc":
            continue
        if r.get("layers"):
            after[r["step"]] = {n: layer["nonzero"] for n, layer in r["layers"].items()}
        else:
            density = next(e["density"] for e in epochs if e["epoch"] == r["epoch"])
            after[r["step"]] = {n: round(d * numel[n]) for n, d in density.items()}

    def forward(counts):
        assert all(per[n] % numel[n] == 0 for n in counts)  # each weight used a whole number of times
        return sum(f * counts[n] // numel[n] if n in counts else f for n, f in per.items())

    total, step, totals, infer = 0, 0, [], []
    for e in epochs:
        while step < e["step"]:
            step += 1
            dense_w = dense_gradient == "every step" or (dense_gradient == "at its updates" and step in after)
            extra = sum(per[n] - per[n] * active[n] // numel[n] for n in active) if dense_w else 0
            total += BATCH * (3 * forward(active) + extra)
            active = after.get(step, active)
        totals.append(total)
        infer.append(forward(active))
    return totals, infer


def test_a_dsr_run_records_what_its_densities_imply(tmp_path):
    last = train(C.load(DIGITS, SHORT), tmp_path, progress=False)
    records = read_records(tmp_path)
    epochs = [r for r in records if r["kind"] == "epoch"]
    reallocs = [r for r in records if r["kind"] == "realloc"]
    assert len(reallocs) >= 5 and any(r["layers"]["fc1.weight"]["pruned"] != r["layers"]["fc1.weight"]["grown"]
                                      for r in reallocs)  # DSR moved weights between tensors
    totals, infer = recount(tmp_path)
    assert [r["train_flops"] for r in epochs] == totals
    assert [r["infer_flops"] for r in epochs] == infer
    assert _steps_of(records) == [20, 40]
    # the cost fields: wall time the sum of epoch times, reallocations timed, the device named
    assert last["train_time"] == pytest.approx(sum(r["epoch_time"] for r in epochs))
    assert 0 < last["realloc_time"] == pytest.approx(sum(r["realloc_time"] for r in reallocs))
    assert last["realloc_time"] < last["train_time"]
    assert last["device"] == "cpu"
    got = costs(tmp_path)
    assert got == {"train_flops": totals[-1], "infer_flops": infer[-1], "train_time": last["train_time"],
                   "realloc_time": last["realloc_time"], "device": "cpu", "epochs_done": 2, "export_bytes": None}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every trainable method trained on the same data, seed and epochs (DSD:
    one epoch more, for its three phases), each once, on demand."""
    base = tmp_path_factory.mktemp("methods")
    done: dict[str, Path] = {}

    def run(method: str) -> Path:
        if method not in done:
            extra = {"gmp": lambda: ["sparsity.gmp.steps=2", "sparsity.gmp.every=1",
                                     f"sparsity.gmp.dense_from={run('dense')}"],
                     "dsd": lambda: ["train.epochs=3", "sparsity.dsd.phases=[1, 2]", "sparsity.stop_epoch=3"]}
            keys = extra[method]() if method in extra else []
            train(C.load(DIGITS, [*SHORT, f"sparsity.method={method}", *keys]), base / method, progress=False)
            done[method] = base / method
        return done[method]

    return run


def _epochs(run_dir: Path) -> list[dict]:
    return [r for r in read_records(run_dir) if r["kind"] == "epoch"]


@pytest.mark.parametrize("method", methods.trainable())
def test_every_method_records_what_its_definition_implies(runs, method):
    run_dir = runs(method)
    epochs = _epochs(run_dir)
    totals, infer = recount(run_dir, DENSE_GRADIENT.get(method))
    assert [r["train_flops"] for r in epochs] == totals, method
    assert [r["infer_flops"] for r in epochs] == infer, method
    assert methods.get(method).dense_grad == {"at its updates": "updates", "every step": "steps"}.get(
        DENSE_GRADIENT.get(method))


def test_the_methods_totals_are_ordered_as_their_definitions_say(runs):
    flops = {m: _epochs(runs(m))[1]["train_flops"] for m in ("dense", "static", "set", "rigl", "snfs", "dsd", "gmp",
                                                             "thin_dense", "hashednet")}
    images = 2 * 20 * BATCH
    dense_forward = module_flops(build_model("small_cnn", in_channels=1), (1, 1, 8, 8))
    assert flops["dense"] == 3 * sum(dense_forward.values()) * images
    assert flops["hashednet"] == flops["dense"]  # its virtual weights are computed densely
    thin = build_run_model(C.load(runs("thin_dense") / "config.yaml"), 10, 1, resuming=True)
    assert flops["thin_dense"] == 3 * sum(module_flops(thin, (1, 1, 8, 8)).values()) * images < flops["dense"]
    assert flops["set"] == flops["static"]  # the same per-tensor counts throughout
    assert flops["static"] < flops["rigl"] < flops["snfs"] < flops["dense"]
    assert flops["static"] < flops["gmp"] and flops["static"] < flops["dsd"]  # dense before pruning
    static = _epochs(runs("static"))[-1]
    assert _epochs(runs("dsd"))[-1]["infer_flops"] == sum(dense_forward.values()) > static["infer_flops"]
    assert _epochs(runs("gmp"))[-1]["infer_flops"] == static["infer_flops"]  # uniform counts at the target


@pytest.mark.parametrize("method", ["dsr", "rigl"])
def test_a_resumed_run_has_an_uninterrupted_runs_totals(tmp_path, method):
    keys = [*SHORT, f"sparsity.method={method}"]
    train(C.load(DIGITS, keys), tmp_path / "straight", progress=False)
    train(C.load(DIGITS, [*keys, "train.stop_after=1"]), tmp_path / "split", progress=False)
    train(C.load(DIGITS, keys), tmp_path / "split", resume=True, progress=False)
    a, b = _epochs(tmp_path / "straight"), _epochs(tmp_path / "split")
    for key in ("train_flops", "infer_flops", "step"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    assert b[-1]["train_time"] == pytest.approx(sum(r["epoch_time"] for r in b))
    assert b[-1]["train_flops"] == recount(tmp_path / "split", DENSE_GRADIENT.get(method))[0][-1]


def _rank_main(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    record = train(C.load(DIGITS, [*SHORT, "sparsity.method=static", "train.stop_after=1"]),
                   Path(out) / f"rank{rank}", progress=False)
    if rank == 0:
        (Path(out) / "record.json").write_text(json.dumps(record))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_count_the_global_batch(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_rank_main, args=(port, str(tmp_path)), nprocs=2)
    two = json.loads((tmp_path / "record.json").read_text())
    one = train(C.load(DIGITS, [*SHORT, "sparsity.method=static", "train.stop_after=1"]), tmp_path / "one",
                progress=False)
    assert two["step"] == one["step"] == 20  # the same global batch: half of it on each rank
    assert two["train_flops"] == one["train_flops"] == 3 * one["infer_flops"] * 20 * BATCH
    assert two["device"] == "2 x cpu" and one["device"] == "cpu"


def test_the_done_line_and_the_run_folder_name_the_cost(tmp_path, capsys):
    from dsr_tune import cli

    run = tmp_path / "run"
    assert cli.main(["train", DIGITS, *SHORT, "train.stop_after=1", "--output", str(run)]) == 0
    last = _epochs(run)[-1]
    out = capsys.readouterr().out
    assert (f"{last['train_flops']:.3g} training FLOPs, {last['infer_flops']:,} FLOPs per image at inference, "
            f"{last['train_time']:.1f} s on cpu") in out
    assert costs(run)["export_bytes"] is None
    assert cli.main(["export", str(run)]) == 0
    assert costs(run)["export_bytes"] == (run / "model.sparse.pt").stat().st_size > 0
