"""A run's artifacts: its resolved config, its model, its density plot.

Built from the run folder alone (config.yaml, metrics.jsonl, checkpoint.pt),
so the trial that just finished and ``dsr-tune sync`` log the same files.
The model is logged twice: as an MLflow logged model of the run
(``models:/...``, named ``<method>-s<sparsity>-seed<k>``, the final epoch's
metrics linked to it, loadable with ``mlflow.pytorch.load_model``; none for
a search trial) and as the compressed sparse
export under ``export/`` (values + positions, see :mod:`dsr_tune.train.export`),
much smaller than the checkpoint with its optimizer state (its size is the
metric ``export_bytes``); the checkpoint is logged there only if the export
fails. A run stopped early (KILLED by ASHA) gets the same files but no model,
and a run whose tracking.json says ``logged_model: false`` (a sweep's search
trial) no MLflow model.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from .. import runfolder
from ..records import EPOCH

log = logging.getLogger("dsr_tune")

DENSITY_PNG = "density.png"
EXPORT = runfolder.EXPORT
# the sparse export's artifact folder: "model" is the MLflow model's name (runs:/<id>/model resolves to it)
EXPORT_DIR = "export"
EXPORT_BYTES = "export_bytes"  # the metric: bytes of the sparse export


def density_plot(records: list[dict], out: str | Path, title: str = "") -> Path | None:
    """Per-layer density (share of active weights) against epochs; None for a
    run without masks (dense, thin dense)."""
    epochs = [r for r in records if r.get("kind") == EPOCH and r.get("density")]
    if not epochs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(epochs[-1]["density"])
    x = [r["epoch"] + 1 for r in epochs]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    cmap = plt.get_cmap("viridis", max(2, len(layers)))
    for i, layer in enumerate(layers):  # earlier layers dark, later ones light
        ax.plot(x, [r["density"].get(layer, float("nan")) for r in epochs], color=cmap(i), lw=1.3,
                label=layer if len(layers) <= 16 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("density (active / all weights)")
    ax.set_title(title or "per-layer density over training")
    ax.grid(alpha=0.3)
    if len(layers) <= 16:
        ax.legend(fontsize=6, ncol=2, loc="best")
    fig.tight_layout()
    out = Path(out)
    runfolder.save_figure(fig, out)
    plt.close(fig)
    return out


def files(run_dir: str | Path, title: str = "", skip: set[str] | frozenset = frozenset(),
          model: bool = True) -> dict[str, Path]:
    """``{artifact path in the run: local file}`` for an ended run folder,
    leaving out the paths in ``skip`` (already logged); writes the plot and,
    with ``model``, the export into the folder first (only those not skipped)."""
    run_dir = Path(run_dir)
    out: dict[str, Path] = {}
    for name in (runfolder.CONFIG, runfolder.METRICS):
        if name not in skip and (run_dir / name).exists():
            out[name] = run_dir / name
    if DENSITY_PNG not in skip and (run_dir / runfolder.METRICS).exists():
        plot = density_plot(runfolder.read_records(run_dir), run_dir / DENSITY_PNG, title)
        if plot is not None:
            out[DENSITY_PNG] = plot
    models = {f"{EXPORT_DIR}/{EXPORT}", f"{EXPORT_DIR}/{runfolder.CHECKPOINT}"}
    if model and not models & set(skip) and runfolder.has_run(run_dir):
        try:
            from ..train.export import export_run  # torch: only when a model is logged

            export_run(run_dir, run_dir / EXPORT)
            out[f"{EXPORT_DIR}/{EXPORT}"] = run_dir / EXPORT
        except Exception as exc:  # noqa: BLE001 (a model the export does not know: keep the checkpoint)
            log.warning("sparse export of %s failed (%s); logging the checkpoint instead", run_dir, exc)
            out[f"{EXPORT_DIR}/{runfolder.CHECKPOINT}"] = run_dir / runfolder.CHECKPOINT
    return out


# MLflow refuses these in a logged model's name
_NAME_BAD = re.compile(r"[/:.%\"'\s]+")


def model_name(run_dir: str | Path, cfg=None) -> str:
    """``<method>-s<sparsity>-seed<seed>`` (``dsr-s0_9-seed1``; dense: ``dense-seed1``): the run's row, sparsity
    and seed, from its tracking.json tags, else its config; MLflow's forbidden characters become ``_``."""
    from .mlflow_runs import read_run_file

    tags = (read_run_file(run_dir) or {}).get("tags") or {}
    method, sparsity, seed = tags.get("method"), tags.get("sparsity"), tags.get("seed")
    if cfg is not None:
        method = method or cfg.sparsity.method
        sparsity = sparsity if sparsity is not None else ("0" if cfg.sparsity.method == "dense"
                                                          else f"{cfg.sparsity.sparsity:g}")
        seed = seed if seed is not None else cfg.train.seed
    parts = [str(method or "model")] + ([f"s{sparsity}"] if sparsity not in (None, "0", 0) else [])
    return _NAME_BAD.sub("_", "-".join(parts + ([f"seed{seed}"] if seed is not None else [])))


def log_model(uri: str, run_id: str, run_dir: Path) -> str:
    """The trained model as an MLflow logged model of ``run_id`` (MLflow's PyTorch flavour; loadable with
    ``mlflow.pytorch.load_model`` where dsr_tune is installed), built from the sparse export: named after
    the run (:func:`model_name`), with an input example of the run's images (and the signature inferred from
    it), the run's params, and the final epoch's metrics linked to it. Returns its URI."""
    import mlflow
    import mlflow.pytorch
    import torch

    from .. import config as C
    from ..data.choices import image_size
    from ..train.export import load_exported

    model = load_exported(run_dir / EXPORT)
    cfg = C.load(run_dir / runfolder.CONFIG)
    size = image_size(cfg.data)
    example = torch.zeros(1, model.conv1.in_channels, size, size)
    done = runfolder.epochs(run_dir)
    mlflow.set_tracking_uri(uri)
    for name in ("mlflow.utils.requirements_utils", "mlflow.pytorch"):  # the pickle format's warning, per model
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with mlflow.start_run(run_id=run_id):  # ends the run FINISHED: the caller sets its real status after
            # step: the run's metrics at that step (the last epoch's) are linked to the model. MLflow checks the
            # input example by loading the model back, which makes it the process's "active model": cleared below
            info = mlflow.pytorch.log_model(
                model, name=model_name(run_dir, cfg), input_example=example.numpy(),
                step=int(done[-1]["epoch"]) + 1 if done else 0, serialization_format="pickle",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                tags={"mlflow.source.name": "dsr-tune", "mlflow.source.type": "LOCAL"})
    finally:
        mlflow.clear_active_model()
    return info.model_uri


def log_files(client, run_id: str, run_dir: str | Path, title: str = "", model: bool = True,
              refresh: bool = False) -> int:
    """Log the run's artifacts that ``run_id`` does not hold yet (with ``refresh``: all of them again, for a
    run that trained on since they were logged), and its MLflow model unless one of its final epoch is
    logged already (only with ``model``: a finished run; none for a search trial, whose selected
    configuration is trained again). Returns how many."""
    have = set()
    if not refresh:
        have = {a.path for a in client.list_artifacts(run_id)}
        have |= {a.path for a in client.list_artifacts(run_id, EXPORT_DIR)}
    n = 0
    for name, path in files(run_dir, title, skip=have, model=model).items():
        folder = str(Path(name).parent) if "/" in name else None
        client.log_artifact(run_id, str(path), artifact_path=folder)
        if name == f"{EXPORT_DIR}/{EXPORT}":  # the final model's size as exported, beside its FLOPs
            client.log_metric(run_id, EXPORT_BYTES, path.stat().st_size)
        n += 1
    from .mlflow_runs import TAG_ROLE, read_run_file, update_run_file

    run_dir = Path(run_dir)
    info = read_run_file(run_dir) or {}
    done = runfolder.epochs(run_dir)
    final = int(done[-1]["epoch"]) + 1 if done else 0
    logged = info.get("mlflow_model") and info.get("mlflow_model_epochs", final) == final
    search = (info.get("tags") or {}).get(TAG_ROLE) == "search"
    if model and info.get("logged_model", True) and not search and not logged and (run_dir / EXPORT).exists():
        try:
            update_run_file(run_dir, mlflow_model=log_model(client.tracking_uri, run_id, run_dir),
                            mlflow_model_epochs=final)
            n += 1
        except Exception as exc:  # noqa: BLE001 (a model torch.export cannot trace: the export is logged)
            log.warning("the MLflow model of %s was not logged (%s); its sparse export is", run_dir,
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return n
