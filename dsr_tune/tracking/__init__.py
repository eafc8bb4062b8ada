"""MLflow tracking for sweeps: a parent run per sweep, a child run per trial.

- :mod:`.store`: the embedded default (sqlite + artifact folder under the
  working directory) or any tracking URI; fast-failing HTTP; reachability;
- :mod:`.mlflow_runs`: MLflow runs found by tag before one is created; records -> metrics;
- :mod:`.logger`: the live logger on rank 0 of a Ray Train worker group;
- :mod:`.tracker`: the sweep's experiment, parent and child runs;
- :mod:`.artifacts`: config, sparse export, per-layer density plot;
- :mod:`.sync`: re-log what MLflow lost from the run folders.

mlflow is imported only inside functions (about 2 s).
"""

from .logger import MlflowLogger, MlflowLoggerSpec
from .store import Target, embedded, resolve
from .tracker import SweepTracker

__all__ = ["MlflowLogger", "MlflowLoggerSpec", "SweepTracker", "Target", "embedded", "resolve"]
