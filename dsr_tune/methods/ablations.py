"""The workshop paper's ablations (seeds/002): comparison rows that train static
sparse or DSR from a finished DSR run's structure or initial values.

=================  ==========================================================
final_reinit       final masks of the DSR run, static, a fresh random init
                   (``train.init_seed``: other weights, the same data order)
final_init         final masks of the DSR run from its own initial values
random_control     random masks, random init, static (the control)
dsr_stop:E         DSR with reallocation stopped at epoch E
=================  ==========================================================
"""

from .registry import Method, register

# final_reinit's train.init_seed is train.seed + this (wrapped below 2**31): a seed
# no comparison run of ordinary seeds uses, so its weights are a fresh draw
REINIT_SEED_OFFSET = 100_000
SEED_LIMIT = 2**31


def _final_reinit(data: dict, parent: str | None, arg: int | None) -> None:
    data["sparsity"]["mask_from"] = parent
    data["train"]["init_seed"] = (data["train"]["seed"] + REINIT_SEED_OFFSET) % SEED_LIMIT


def _final_init(data: dict, parent: str | None, arg: int | None) -> None:
    data["sparsity"]["mask_from"] = parent
    data["sparsity"]["init_from"] = parent


def _dsr_stop(data: dict, parent: str | None, arg: int | None) -> None:
    data["sparsity"]["stop_epoch"] = arg


register(Method("final_reinit", "ablation", "the DSR run's final structure, trained static from a fresh init",
                runs="static", needs="dsr", default_row=False, derive=_final_reinit))
register(Method("final_init", "ablation", "the DSR run's final structure, trained static from its own init",
                runs="static", needs="dsr", default_row=False, derive=_final_init))
register(Method("random_control", "ablation", "random structure, random init, static (the control)",
                runs="static", default_row=False))
register(Method("dsr_stop", "ablation", "DSR with reallocation stopped at epoch E (written dsr_stop:E)",
                runs="dsr", parametric=True, default_row=False, derive=_dsr_stop))
