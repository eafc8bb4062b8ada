"""The device path: mixed precision with masks, DeepR's noise on the device, checkpoints moved
between devices, channels_last with masks.

Every test takes the device as a parameter. Without CUDA the CPU variants run (bf16 autocast
works on the CPU); only what needs CUDA skips, saying why: fp16 with a grad scaler (the
trainer refuses it on the CPU) and moving a checkpoint between two devices.

    python -m pytest -m cuda tests/test_cuda.py     # benchmarks/gpu_check.py runs this on the GPU
"""


import pytest
import torch
import torch.nn.functional as F

from dsr_tune import config as C
from dsr_tune.models import build_model, sparse_names
from dsr_tune.sparse import Masking, deepr, dsr
from dsr_tune import checkpoint as ckpt
from dsr_tune.train import train
from dsr_tune.runfolder import read_records

pytestmark = pytest.mark.cuda

HAS_CUDA = torch.cuda.is_available()
CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA, which this machine lacks"))
DEVICES = ["cpu", CUDA]
FP16 = "fp16 trains with a grad scaler on CUDA only (train.precision=fp16 is refused on the CPU)"
MOVE = "moves a checkpoint between CPU and GPU: needs CUDA, which this machine lacks"
from conftest import DIGITS
# the trainer-level test's config keys: a 3-epoch schedule, cut after 2 (train.stop_after) and resumed
DIGITS_FAST = ["train.epochs=3", "optim.milestones=[]", "sparsity.period_schedule=[[0, 7]]", "sparsity.stop_epoch=3",
               "sparsity.dsr.target_pruned=100"]


def make(device, *, channels_last=True, seed=0, method=None):
    """ResNet-50 at width 1/8 (every bottleneck conv and the FC sparse), SGD Nesterov, masks at 0.9."""
    torch.manual_seed(seed)
    model = build_model("resnet50", width=0.125, num_classes=10).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    method = method if method is not None else dsr(periods=[(0, 2)], stop_epoch=None, target_pruned=3000)
    masking = Masking(model, opt, sparsity=0.9, names=sparse_names("resnet50", model), method=method, seed=seed)
    return model, opt, masking


def batch(device, n=4, size=32, channels_last=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g).to(device)
    y = torch.randint(0, 10, (n,), generator=g).to(device)
    return (x.contiguous(memory_format=torch.channels_last) if channels_last else x), y


def assert_invariants(masking):
    """Budget exact; every inactive weight and its momentum exactly zero, on the weights' device."""
    assert sum(int(m.count_nonzero()) for m in masking.masks.values()) == masking.budget
    for name, p in masking.params.items():
        mask = masking.masks[name]
        assert mask.device == p.device and mask.dtype == torch.bool and mask.shape == p.shape
        assert int(p.detach()[~mask].count_nonzero()) == 0, name
        buf = masking.optimizer.state[p]["momentum_buffer"]
        assert int(buf[~mask].count_nonzero()) == 0, name


def step(model, opt, masking, x, y, scaler, dtype) -> bool:
    """One training step as the trainer takes it; False when the grad scaler skipped it."""
    with torch.autocast(x.device.type, dtype=dtype):
        loss = F.cross_entropy(model(x).float(), y)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scale = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(opt)
    scaler.update()
    stepped = scale is None or scaler.get_scale() >= scale
    if stepped:
        masking.step()
    return stepped


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "contiguous"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("device", DEVICES)
def test_mixed_precision_steps_keep_masks(device, precision, channels_last):
    if precision == "fp16" and device == "cpu":
        pytest.skip(FP16)
    model, opt, masking = make(device, channels_last=channels_last)
    before = {n: p.detach().clone() for n, p in masking.params.items()}
    scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    x, y = batch(device, channels_last=channels_last)
    stepped = [step(model, opt, masking, x, y, scaler, dtype) for _ in range(6)]
    assert sum(stepped) >= 4  # fp16: the scaler may skip its first steps while it finds its scale
    assert masking.global_step == sum(stepped) and len(masking.pop_events()) == sum(stepped) // 2
    assert_invariants(masking)
    for name, p in masking.params.items():
        assert p.dtype == torch.float32  # master weights stay fp32 under autocast
        assert p.is_contiguous(memory_format=torch.channels_last if channels_last and p.dim() == 4 else torch.contiguous_format)
        kept = masking.masks[name] & (before[name] != 0)
        assert not torch.equal(p.detach()[kept], before[name][kept]), f"{name} did not train"


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason=FP16))])
def test_fp16_skipped_step_changes_nothing(device):
    """An inf gradient makes the scaler skip the step: weights, momentum and masks stay as
    they were, and the trainer's rule (the scale dropped) sees it."""
    model, opt, masking = make(device)
    scaler = torch.amp.GradScaler(device)
    x, y = batch(device)
    while not step(model, opt, masking, x, y, scaler, torch.float16):
        pass  # until one real step: momentum buffers exist
    weights = {n: p.detach().clone() for n, p in masking.params.items()}
    momenta = {n: opt.state[p]["momentum_buffer"].clone() for n, p in masking.params.items()}
    masks = {n: m.clone() for n, m in masking.masks.items()}
    with torch.autocast(device, dtype=torch.float16):
        loss = F.cross_entropy(model(x).float(), y)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    next(iter(masking.params.values())).grad.view(-1)[0] = float("inf")
    scale = scaler.get_scale()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() < scale
    for n, p in masking.params.items():
        assert torch.equal(p.detach(), weights[n]) and torch.equal(opt.state[p]["momentum_buffer"], momenta[n])
        assert torch.equal(masking.masks[n], masks[n])
    assert_invariants(masking)


@pytest.mark.parametrize("device", DEVICES)
def test_deepr_noise_on_the_device(device):
    """DeepR's noise is drawn where the weights live, with std sqrt(2 eta T), on active weights
    only, identical for two runs seeded alike (every DDP rank) and new at every step."""
    eta, temperature = 0.5, 1e-2  # std 0.1
    runs = []
    for _ in range(2):
        model, opt, masking = make(device, method=deepr(temperatures=[(0, temperature)], l1=0.0, lr=eta))
        with torch.no_grad():
            for name, p in masking.params.items():
                p.copy_(masking.masks[name].to(p.dtype))  # active weights at 1: 10 std from a sign flip
        masking.method.dynamics.after_step(masking)
        runs.append({n: p.detach().clone() for n, p in masking.params.items()})
    noise = torch.cat([(runs[0][n] - 1)[masking.masks[n]] for n in masking.params])
    assert noise.device.type == torch.device(device).type
    assert abs(float(noise.std()) - (2 * eta * temperature) ** 0.5) < 0.003
    assert abs(float(noise.mean())) < 0.003
    for n, m in masking.masks.items():
        assert torch.equal(runs[0][n], runs[1][n])  # the same draws from the same seed
        assert int(runs[0][n][~m].count_nonzero()) == 0
    masking.method.dynamics.after_step(masking)
    name = next(iter(masking.params))
    assert not torch.equal(masking.params[name].detach(), runs[1][name])  # a fresh draw at the next step


@pytest.mark.parametrize("device", DEVICES)
def test_deepr_rewires_on_the_device_with_exact_budget(device):
    """Weights near zero plus noise flip sign: DeepR's step removes them and regrows as many in
    the same tensor, on the device, keeping every count and the zeros."""
    model, opt, masking = make(device, method=deepr(temperatures=[(0, 1e-2)], l1=1e-5, lr=0.5))
    x, y = batch(device)
    scaler = torch.amp.GradScaler(device, enabled=False)
    step(model, opt, masking, x, y, scaler, torch.bfloat16)
    counts = masking.nonzero_counts()
    with torch.no_grad():
        for name, p in masking.params.items():
            p.mul_(1e-4)  # sign flips certain for about half of them under noise of std 0.1
    for _ in range(3):
        step(model, opt, masking, x, y, scaler, torch.bfloat16)
    events = masking.pop_events()
    assert len(events) == 4 and sum(e["pruned"] for e in events[1:]) > masking.budget // 4
    assert masking.nonzero_counts() == counts  # same tensor: every tensor keeps its count
    assert_invariants(masking)


def _train_and_save(device, path):
    model, opt, masking = make(device, method=dsr(periods=[(0, 3)], stop_epoch=None, target_pruned=3000))
    x, y = batch(device)
    scaler = torch.amp.GradScaler(device, enabled=False)
    for _ in range(4):
        step(model, opt, masking, x, y, scaler, torch.bfloat16)
    assert len(masking.pop_events()) == 1
    ckpt.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "masking": masking.state_dict()}, path)
    return model, opt, masking


@pytest.mark.parametrize("src,dst", [
    ("cpu", "cpu"),
    pytest.param("cuda", "cpu", marks=pytest.mark.skipif(not HAS_CUDA, reason=MOVE)),
    pytest.param("cpu", "cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason=MOVE)),
])
def test_checkpoint_moves_between_devices_and_resumes_exactly(src, dst, tmp_path):
    """Written on one device, loaded on the other: weights, momentum, masks, threshold, step
    and generator come back bit for bit, and the next reallocation takes the same decision
    on both devices (it compares weights and draws from the CPU generator: no device numerics)."""
    path = tmp_path / "ckpt.pt"
    _, opt_a, masking_a = _train_and_save(src, path)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model_b, opt_b, masking_b = make(dst, seed=1, method=dsr(periods=[(0, 3)], stop_epoch=None, target_pruned=3000))
    state = ckpt.load(path, map_location=dst)
    model_b.load_state_dict(state["model"])
    opt_b.load_state_dict(state["optimizer"])
    masking_b.load_state_dict(state["masking"])
    for name, p in masking_b.params.items():
        assert p.device.type == dst and masking_b.masks[name].device.type == dst
        assert torch.equal(p.detach().cpu(), saved["model"][name])
        assert torch.equal(masking_b.masks[name].cpu(), saved["masking"]["masks"][name])
    for buf_b, buf_a in zip((opt_b.state[p]["momentum_buffer"] for p in model_b.parameters()),
                            (opt_a.state[p]["momentum_buffer"] for p in opt_a.param_groups[0]["params"])):
        assert buf_b.device.type == dst and torch.equal(buf_b.cpu(), buf_a.cpu())
    assert masking_b.global_step == masking_a.global_step == 4
    assert masking_b.method.pruner.threshold == masking_a.method.pruner.threshold
    assert torch.equal(masking_b.generator.get_state(), masking_a.generator.get_state())
    assert_invariants(masking_b)
    rec_a, rec_b = masking_a.reallocate(), masking_b.reallocate()
    assert rec_a["pruned"] == rec_b["pruned"] > 0
    for name in masking_a.masks:
        assert torch.equal(masking_a.masks[name].cpu(), masking_b.masks[name].cpu()), name
    assert_invariants(masking_b)


@pytest.mark.parametrize("src,dst", [
    pytest.param("cuda", "cpu", marks=pytest.mark.skipif(not HAS_CUDA, reason=MOVE)),
    pytest.param("cpu", "cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason=MOVE)),
])
def test_trainer_resumes_on_the_other_device(src, dst, tmp_path):
    """The trainer's own checkpoint: 2 epochs on one device, a third resumed on the other."""
    train(C.load(DIGITS, DIGITS_FAST + [f"train.device={src}", "train.precision=bf16", "train.stop_after=2"]),
          tmp_path)
    last = train(C.load(DIGITS, DIGITS_FAST + [f"train.device={dst}", "train.precision=bf16"]), tmp_path, resume=True)
    epochs = [r for r in read_records(tmp_path / "metrics.jsonl") if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1, 2]
    state = ckpt.load(tmp_path, map_location="cpu")
    masks, budget = state["masking"]["masks"], state["masking"]["budget"]
    assert state["epoch"] == 3 and sum(int(m.sum()) for m in masks.values()) == budget
    assert all(int(state["model"][n][~m].count_nonzero()) == 0 for n, m in masks.items())
    assert last["nonzero_params"] == epochs[0]["nonzero_params"]


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_masks_match_contiguous(device):
    """The same model in both memory formats: masks keyed and drawn alike, and with the same
    gradients every weight, momentum and reallocation is identical, the weights staying
    channels_last (masks index the logical layout, whatever the storage order)."""
    (_, opt_a, ma), (_, opt_b, mb) = make(device, channels_last=False), make(device, channels_last=True)
    assert list(ma.masks) == list(mb.masks)
    assert all(torch.equal(ma.masks[n], mb.masks[n]) for n in ma.masks)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):  # period 2: reallocations at steps 2 and 4
        for pa, pb in zip(opt_a.param_groups[0]["params"], opt_b.param_groups[0]["params"]):
            grad = torch.randn(pa.shape, generator=g).mul_(0.01).to(device)
            # each gradient in its weight's own strides, as autograd leaves it
            pa.grad, pb.grad = torch.empty_like(pa).copy_(grad), torch.empty_like(pb).copy_(grad)
        opt_a.step(), opt_b.step()
        ma.step(), mb.step()
    assert len(ma.pop_events()) == len(mb.pop_events()) == 2
    for n in ma.masks:
        pa, pb = ma.params[n], mb.params[n]
        assert pb.dim() != 4 or pb.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(ma.masks[n], mb.masks[n]), n
        assert torch.equal(pa, pb), n
        assert torch.equal(opt_a.state[pa]["momentum_buffer"], opt_b.state[pb]["momentum_buffer"]), n
    assert_invariants(ma)
    assert_invariants(mb)
