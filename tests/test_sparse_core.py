"""The sparse core: masks, DSR's prune/grow/threshold, and their invariants."""

import pytest
import torch
from torch import nn

from dsr_tune.sparse import (Masking, PeriodSchedule, ProportionalToSurvivors, RandomGrowth, Reallocator,
                             SameTensor, ThresholdPrune, dsr, keep_one, proportional_counts, sample_positions)


class TwoLayer(nn.Module):
    def __init__(self, a=(20, 30), b=(40, 50)):
        super().__init__()
        self.l1 = nn.Linear(a[1], a[0], bias=False)
        self.l2 = nn.Linear(b[1], b[0], bias=False)

    def forward(self, x):
        return x


def make(sparsity=0.8, method=None, seed=0, opt=True):
    torch.manual_seed(seed)
    model = TwoLayer()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if opt else None
    return model, optimizer, Masking(model, optimizer, sparsity=sparsity, method=method, seed=seed)


def total_active(masking):
    return sum(int(m.sum()) for m in masking.masks.values())


def set_weights(masking, values):
    """Put known values on the active positions (inactive ones stay zero)."""
    with torch.no_grad():
        for name, p in masking.params.items():
            p.copy_(values[name] * masking.masks[name])


def one_shot(threshold, np_=100, delta=0.1):
    return Reallocator(PeriodSchedule([(0, 1)]), ThresholdPrune(threshold, np_, delta),
                       ProportionalToSurvivors(), RandomGrowth(), name="DSR")


# ------------------------------------------------------------------ masks


def test_uniform_initial_sparsity_and_budget():
    _, _, m = make(0.8)
    for name, mask in m.masks.items():
        assert int(mask.sum()) == round(0.2 * mask.numel())
    assert m.budget == total_active(m) == round(0.2 * 600) + round(0.2 * 2000)


@pytest.mark.parametrize("optim", ["sgd", "adam"])
def test_inactive_weights_and_optimizer_state_zero_after_steps(optim):
    torch.manual_seed(0)
    model = TwoLayer()
    opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3) if optim == "sgd"
           else torch.optim.Adam(model.parameters(), lr=0.1))
    m = Masking(model, opt, sparsity=0.9, hook=True, seed=3)
    for _ in range(5):
        loss = sum((p ** 2 - 1).sum() for p in model.parameters())  # gradient everywhere
        opt.zero_grad()
        loss.backward()
        opt.step()  # the hook re-applies the masks
        for name, p in model.named_parameters():
            mask = m.masks[name]
            assert torch.all(p[~mask] == 0)
            for buf in opt.state[p].values():
                if buf.shape == p.shape:
                    assert torch.all(buf[~mask] == 0)
            assert torch.any(p[mask] != 0)
    assert m.global_step == 5
    m.remove_hook()
    opt.step()
    assert m.global_step == 5


def test_state_dict_round_trip():
    _, _, a = make(0.8, method=dsr(periods=[(0, 1)]), seed=1)
    for _ in range(3):
        a.step()
    b_model, b_opt, b = make(0.8, method=dsr(periods=[(0, 1)]), seed=2)
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
    assert b.global_step == a.global_step and b.method.pruner.threshold == a.method.pruner.threshold
    assert torch.equal(a.generator.get_state(), b.generator.get_state())


# ------------------------------------------------------------------ DSR reallocation


def test_budget_exact_after_every_reallocation():
    torch.manual_seed(0)
    model = TwoLayer()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    m = Masking(model, opt, sparsity=0.9, method=one_shot(0.05, np_=20))
    events = 0
    for _ in range(40):
        loss = sum((p.sum() - 3) ** 2 for p in model.parameters())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if m.step() is not None:
            events += 1
            assert total_active(m) == m.budget
    assert events == 40 and total_active(m) == m.budget


def test_pruning_removes_exactly_the_small_active_weights_and_regrows_k():
    _, _, m = make(0.5, method=one_shot(0.5))
    set_weights(m, {n: torch.linspace(-1, 1, p.numel()).view_as(p) for n, p in m.params.items()})
    before = {n: mask.clone() for n, mask in m.masks.items()}
    small = {n: before[n] & (m.params[n].abs() < 0.5) for n in m.masks}
    rec = m.reallocate()
    k = sum(int(s.sum()) for s in small.values())
    assert rec["pruned"] == k == rec["grown"]
    for n in m.masks:
        assert rec["layers"][n]["pruned"] == int(small[n].sum())
        # survivors kept, every small one gone (nothing regrown where just pruned)
        assert torch.all(m.masks[n][before[n] & ~small[n]])
        assert not torch.any(m.masks[n][small[n]])


def test_grown_weights_start_at_zero_with_zero_momentum():
    """Growth back into just-pruned positions (RigL-style candidates) must zero
    their old value and momentum: apply() alone would keep them, being active again."""
    torch.manual_seed(0)
    model = TwoLayer()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method = Reallocator(PeriodSchedule([(0, 1)]), ThresholdPrune(0.5, 100), SameTensor(), RandomGrowth(),
                         regrow_pruned=True)
    m = Masking(model, opt, sparsity=0.3, method=method)  # little room: much regrowth lands on pruned slots
    loss = sum((p - 1).pow(2).sum() for p in model.parameters())
    loss.backward()
    opt.step()
    m.apply()
    set_weights(m, {n: torch.full(p.shape, 0.1) for n, p in m.params.items()})  # all below H: pruned
    before = {n: mask.clone() for n, mask in m.masks.items()}
    m.reallocate()
    regrown = 0
    for n, p in m.params.items():
        kept = p != 0  # keep_one spared one weight per tensor; every other was pruned
        assert int(kept.sum()) == 1
        again = m.masks[n] & before[n] & ~kept  # pruned and grown back in the same reallocation
        regrown += int(again.sum())
        assert torch.all(p[m.masks[n] & ~before[n]] == 0)
        assert torch.all(opt.state[p]["momentum_buffer"][again] == 0)
    assert regrown > 0 and total_active(m) == m.budget


def test_direct_reallocate_zeroes_grown_positions_even_when_inactive_ones_are_not():
    """step() applies the masks before it reallocates, so growth need not zero
    again there; a library user calling reallocate() right after an optimizer
    step (inactive weights and momentum moved) must still get zeros."""
    torch.manual_seed(0)
    model = TwoLayer()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    m = Masking(model, opt, sparsity=0.8, method=one_shot(10.0, np_=20))  # prunes all but one per tensor
    loss = sum((p - 1).pow(2).sum() for p in model.parameters())
    loss.backward()
    opt.step()  # no m.step(): every inactive weight and its momentum is non-zero now
    assert all(bool((p[~m.masks[n]] != 0).all()) for n, p in m.params.items())
    before = {n: mask.clone() for n, mask in m.masks.items()}
    rec = m.reallocate()
    assert rec["grown"] > 0
    for n, p in m.params.items():
        grown = m.masks[n] & ~before[n]
        assert bool(grown.any()) or rec["layers"][n]["grown"] == 0
        assert torch.all(p[grown] == 0) and torch.all(opt.state[p]["momentum_buffer"][grown] == 0)
    assert m.inactive_zero is False  # the promise holds for one call only


def test_no_room_fills_free_positions_first_then_spills_into_just_pruned():
    # density 0.7: 70% active, 30% free; prune almost everything, so K > room
    _, _, m = make(0.3, method=one_shot(10.0, np_=5))
    set_weights(m, {n: torch.rand(p.shape) for n, p in m.params.items()})
    before = {n: mask.clone() for n, mask in m.masks.items()}
    rec = m.reallocate()
    assert total_active(m) == m.budget
    for n, mask in m.masks.items():
        assert bool(mask[~before[n]].all())  # every free position was taken first
        back = int((mask & before[n]).sum()) - 1  # minus the one kept by keep_one
        layer = rec["layers"][n]
        assert layer["grown"] - back == int((~before[n]).sum())


def test_steps_per_epoch_derives_the_epoch_of_the_step_taken():
    _, _, m = make(0.8, method=dsr(periods=[(0, 3)], stop_epoch=1))
    m.steps_per_epoch = 3
    events = [m.step() is not None for _ in range(6)]
    # steps 1-3 are epoch 0 (reallocation at step 3); steps 4-6 epoch 1 = stop epoch
    assert events == [False, False, True, False, False, False] and m.epoch == 1


def test_state_with_generator_on_another_device_loads():
    _, _, a = make(0.8, method=dsr(periods=[(0, 1)]))
    state = a.state_dict()
    state["generator"] = state["generator"].to(torch.float32).to(torch.uint8)  # a copy, as map_location gives
    _, _, b = make(0.8, method=dsr(periods=[(0, 1)]), seed=5)
    b.load_state_dict(state)
    assert torch.equal(b.generator.get_state(), a.generator.get_state())


@pytest.mark.parametrize("pruned_count,expected", [(200, 0.5), (50, 2.0), (100, 1.0), (109, 1.0), (91, 1.0), (111, 0.5), (89, 2.0)])
def test_threshold_halves_doubles_or_stays(pruned_count, expected):
    pr = ThresholdPrune(init_threshold=1.0, target_pruned=100, delta=0.1)
    pr.adjust(pruned_count)
    assert pr.threshold == expected


def test_threshold_adapts_inside_a_real_reallocation():
    # all 600 active weights of l1 below H, Np = 10: K >> (1+delta) Np, so H halves
    _, _, m = make(0.0, method=one_shot(2.0, np_=10))
    set_weights(m, {n: torch.full(p.shape, 1.0) for n, p in m.params.items()})
    rec = m.reallocate()
    assert rec["threshold"] == 2.0 and rec["next_threshold"] == 1.0
    # nothing below H, Np = 10: K = 0 < (1-delta) Np, so H doubles
    _, _, m = make(0.5, method=one_shot(1e-9, np_=10))
    set_weights(m, {n: torch.full(p.shape, 1.0) for n, p in m.params.items()})
    assert m.reallocate()["next_threshold"] == 2e-9


def test_regrowth_proportional_to_survivors_with_rounding():
    gen = torch.Generator().manual_seed(0)
    survivors = {"a": 1, "b": 2, "c": 4, "d": 7}
    room = {n: 10_000 for n in survivors}
    for total in (0, 1, 5, 13, 14, 99, 1000):
        got = proportional_counts(total, survivors, room, gen)
        assert sum(got.values()) == total
        for n, r in survivors.items():
            exact = total * r / 14
            assert int(exact) <= got[n] <= int(exact) + 1


def test_regrowth_passes_on_the_share_of_a_full_tensor():
    gen = torch.Generator().manual_seed(0)
    got = proportional_counts(100, {"a": 50, "b": 50}, {"a": 10, "b": 1000}, gen)
    assert got == {"a": 10, "b": 90}


def test_reallocation_spreads_growth_by_survivors():
    _, _, m = make(0.5, method=one_shot(0.5))
    # l1: keep 10% of its actives above H; l2: keep 90%
    vals = {}
    for n, p in m.params.items():
        keep = 0.1 if n == "l1.weight" else 0.9
        v = torch.where(torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) < keep, 1.0, 0.01)
        vals[n] = v
    set_weights(m, vals)
    rec = m.reallocate()
    k = rec["pruned"]
    surv = {n: rec["layers"][n]["nonzero"] - rec["layers"][n]["grown"] for n in m.masks}
    r = sum(surv.values())
    for n in m.masks:
        assert abs(rec["layers"][n]["grown"] - k * surv[n] / r) < 1


def test_a_tensor_is_never_emptied():
    _, _, m = make(0.9, method=one_shot(10.0, np_=5))  # H above every weight
    set_weights(m, {n: torch.rand(p.shape) for n, p in m.params.items()})
    biggest = {n: (p.abs() * m.masks[n]).argmax() for n, p in m.params.items()}
    before = {n: mask.clone() for n, mask in m.masks.items()}
    m.reallocate()
    for n, mask in m.masks.items():
        assert mask.view(-1)[biggest[n]]  # the largest active weight survived
        assert int((mask & before[n]).sum()) == 1
    assert total_active(m) == m.budget


def test_keep_one_spares_the_largest():
    w = torch.tensor([0.1, -0.5, 0.2, 0.0])
    mask = torch.tensor([True, True, True, False])
    kept = keep_one(w, mask, mask.clone())
    assert kept.tolist() == [True, False, True, False]


def test_sample_positions_uniform_and_only_free():
    gen = torch.Generator().manual_seed(0)
    free = torch.zeros(1000, dtype=torch.bool)
    free[::3] = True
    hits = torch.zeros(1000)
    for _ in range(300):
        idx = sample_positions(~free, 20, int(free.sum()), gen)
        assert len(set(idx.tolist())) == 20 and bool(free[idx].all())
        hits[idx] += 1
    rate = hits[free] / 300
    assert abs(rate.mean() - 20 / 334) < 1e-3 and rate.max() < 0.2  # no position strongly favoured
    # dense regime path: almost every free position wanted
    idx = sample_positions(~free, 300, int(free.sum()), gen)
    assert len(set(idx.tolist())) == 300 and bool(free[idx].all())


def test_period_schedule_and_stop_epoch():
    s = PeriodSchedule([(0, 100), (25, 200), (80, 400), (140, 800)], stop_epoch=190)
    assert [s.period(e) for e in (0, 24, 25, 79, 80, 140, 199)] == [100, 100, 200, 200, 400, 800, 800]
    assert s.due(100, 0) and not s.due(150, 0) and s.due(200, 30) and not s.due(300, 30)
    assert not s.due(800, 190)
    assert PeriodSchedule([(0, 100)], scale=0.5).period(0) == 50


def test_same_seed_same_decisions():
    def run(seed):
        torch.manual_seed(0)
        model = TwoLayer()
        opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
        m = Masking(model, opt, sparsity=0.8, method=one_shot(0.05, np_=30), seed=seed)
        for _ in range(10):
            loss = sum((p.sum() - 1) ** 2 for p in model.parameters())
            opt.zero_grad()
            loss.backward()
            opt.step()
            m.step()
        return m.masks
    a, b, c = run(7), run(7), run(8)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)


def test_every_stateful_part_keeps_its_checkpoint_keys_and_loads_them_back():
    """The parts' state is declared once (sparse/state.py); a checkpoint's keys are the attribute
    names they always were, numbers load through their type, per-tensor dicts load in place
    onto the device of the tensor they replace."""
    from dsr_tune.sparse import DenseMomentum, SignFlipPrune
    from dsr_tune.sparse.pruning_schedules import DenseSparseDense, GradualMagnitudePruning

    prune = ThresholdPrune(0.01)
    prune.threshold = 0.04
    assert prune.state_dict() == {"threshold": 0.04}
    prune.load_state_dict({"threshold": 1})  # an int in an old checkpoint: a float again
    assert prune.threshold == 1.0 and isinstance(prune.threshold, float)
    gmp, dsd = GradualMagnitudePruning(0.9), DenseSparseDense(0.9, 1, 2)
    gmp.load_state_dict({"done": 3.0})
    dsd.load_state_dict({"phase": 2})
    assert gmp.state_dict() == {"done": 3} and isinstance(gmp.done, int) and dsd.state_dict() == {"phase": 2}
    for part, key in ((DenseMomentum(), "buffers"), (SignFlipPrune(), "positive")):
        own = {"w": torch.zeros(3, dtype=torch.float64)}
        setattr(part, key, own)
        part.load_state_dict({key: {"w": torch.arange(3.0), "new": torch.ones(1)}})
        assert getattr(part, key) is own and own["w"].dtype == torch.float32 and own["new"].tolist() == [1.0]
        saved = part.state_dict()
        assert list(saved) == [key] and saved[key]["w"].tolist() == [0.0, 1.0, 2.0], part
