"""What a run tells the world: files in the workdir, the metric window and progress on screen.

Only process 0 writes files and shows progress; the other processes of a multi-host run get
disabled writers, so the loop calls them unconditionally.
"""

from collections.abc import Iterable, Mapping, Sequence
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Any

from absl import logging
from etils import epath
import jax

from cfl_jax import store
from cfl_jax.store import fenced

# Train metrics that are measurements (averaged over the window); the step's other metrics are
# schedule values, reported as they were at the window's last step.
MEASURED = ("loss", "accuracy", "grad_norm")


class MetricWindow:
  """Averages the measured train metrics over the steps between two log lines.

  Values stay on device until :meth:`flush` or :meth:`snapshot`, so logging does not stall the
  dispatch of further steps. Sums are accumulated step by step in float64 on the host, so a window
  restored from a :meth:`snapshot` continues exactly as an uninterrupted one. Non-finite
  measurements are left out of the means and counted as ``nonfinite_steps`` (reported only when
  there were any, with the ``nonfinite_metrics`` concerned), so the loop can tell a diverged
  window from a skipped update.
  """

  def __init__(self, snapshot: Mapping[str, Any] | None = None):
    snapshot = snapshot or {}
    self._sums = dict(snapshot.get("sums", {}))
    self._counts = dict(snapshot.get("counts", {}))
    self._nonfinite = snapshot.get("nonfinite", 0)
    self._nonfinite_metrics = set(snapshot.get("nonfinite_metrics", ()))
    self._last = dict(snapshot.get("last", {}))
    self._pending: list[dict[str, jax.Array]] = []

  def add(self, metrics: Mapping[str, jax.Array]) -> None:
    """Records one step's metrics (device arrays)."""
    self._pending.append(dict(metrics))

  def _absorb(self) -> None:
    for metrics in jax.device_get(self._pending):
      finite = True
      for key, value in metrics.items():
        value = float(value)
        if key not in MEASURED:
          self._last[key] = value
        elif math.isfinite(value):
          self._sums[key] = self._sums.get(key, 0.0) + value
          self._counts[key] = self._counts.get(key, 0) + 1
        else:
          finite = False
          self._nonfinite_metrics.add(key)
      self._nonfinite += not finite
    self._pending = []

  def snapshot(self) -> dict[str, Any]:
    """A JSON-serialisable snapshot from which ``MetricWindow(snapshot)`` continues."""
    self._absorb()
    return {"sums": dict(self._sums), "counts": dict(self._counts),
            "nonfinite": self._nonfinite, "nonfinite_metrics": sorted(self._nonfinite_metrics),
            "last": dict(self._last)}

  def flush(self) -> dict[str, float | None]:
    """The window's means (None for a metric with no finite value) and last schedule values;
    starts a new window."""
    self._absorb()
    record = {key: (self._sums[key] / self._counts[key] if self._counts.get(key) else None)
              for key in MEASURED if key in self._sums or self._nonfinite}
    if self._nonfinite:
      record["nonfinite_steps"] = self._nonfinite
      record["nonfinite_metrics"] = sorted(self._nonfinite_metrics)
    record.update(self._last)
    self._sums, self._counts, self._nonfinite, self._last = {}, {}, 0, {}
    self._nonfinite_metrics = set()
    return record


@dataclasses.dataclass(frozen=True)
class Selection:
  """One way of picking a run's best evaluation: the highest ``metric`` over all of them.

  Its summary keys are ``best_<metric>``, ``best<tag>_epoch`` and ``best<tag>_step`` (``tag`` is
  empty or starts with ``_``), and ``<key>_at_best<tag>`` for each key ``carried`` from that
  evaluation.
  """

  metric: str
  tag: str = ""
  carried: tuple[str, ...] = ()


#: The selections a run reports, as docs/studies.md ("What differs from the papers") explains.
#: timm and LDAM report the best test top-1 over epochs (timm from the EMA weights when it keeps
#: them, here ``best_ema_test_accuracy``); OLTR the test metrics of the epoch with the best
#: validation top-1.
SELECTIONS = (
    Selection("test_accuracy"),
    Selection("ema_test_accuracy", "_ema"),
    Selection("validation_accuracy", "_validation",
              carried=("test_accuracy", "balanced_accuracy", "many_shot_accuracy",
                       "medium_shot_accuracy", "few_shot_accuracy", "test_loss")),
)


class BestMetrics:
  """The best evaluation of a run so far under each of :data:`SELECTIONS`.

  An evaluation replaces the best only when strictly higher, so of equal values the first (the
  earliest epoch) stays best, as timm's checkpoint saver keeps it; evaluations without a finite
  value of a selection's metric are ignored by it. A run keeps :meth:`snapshot` in each
  checkpoint, so a resumed run reports what an uninterrupted one does; :meth:`from_records`
  rebuilds the same state from the eval records of ``metrics.jsonl`` (for checkpoints written
  before the snapshot existed).

  Examples:
    >>> best = BestMetrics()
    >>> for step, accuracy in ((10, 0.5), (20, 0.7), (30, 0.7), (40, 0.6)):
    ...   best.update({"step": step, "epoch": step / 10, "test_accuracy": accuracy})
    >>> best.summary()
    {'best_test_accuracy': 0.7, 'best_epoch': 2.0, 'best_step': 20}
  """

  def __init__(self, snapshot: Mapping[str, Any] | None = None):
    self._best = {metric: dict(chosen) for metric, chosen in (snapshot or {}).items()}

  @classmethod
  def from_records(cls, records: Iterable[Mapping[str, Any]]) -> "BestMetrics":
    """The best of the ``'eval'`` records among ``records`` (those of ``metrics.jsonl``)."""
    best = cls()
    for record in records:
      if record.get("split") == "eval":
        best.update(record)
    return best

  def update(self, record: Mapping[str, Any]) -> None:
    """Takes one evaluation: ``step``, ``epoch`` and its metrics."""
    for selection in SELECTIONS:
      value = record.get(selection.metric)
      if not isinstance(value, (int, float)) or not math.isfinite(value):
        continue
      chosen = self._best.get(selection.metric)
      if chosen is None or value > chosen["value"]:
        self._best[selection.metric] = {
            "value": value, "step": record["step"], "epoch": record["epoch"],
            "carried": {key: record.get(key) for key in selection.carried}}

  def snapshot(self) -> dict[str, Any]:
    """A JSON-serialisable snapshot from which ``BestMetrics(snapshot)`` continues."""
    return {metric: dict(chosen) for metric, chosen in self._best.items()}

  def summary(self) -> dict[str, Any]:
    """The summary keys of every selection that has seen a value (see :class:`Selection`)."""
    summary: dict[str, Any] = {}
    for selection in SELECTIONS:
      chosen = self._best.get(selection.metric)
      if chosen is None:
        continue
      summary[f"best_{selection.metric}"] = chosen["value"]
      summary[f"best{selection.tag}_epoch"] = chosen["epoch"]
      summary[f"best{selection.tag}_step"] = chosen["step"]
      summary.update({f"{key}_at_best{selection.tag}": value
                      for key, value in chosen["carried"].items()})
    return summary

  def scalars(self) -> dict[str, float]:
    """The numbers of :meth:`summary` that are neither epochs nor steps, named without a
    leading ``best_`` (TensorBoard shows them as ``best/<name>``)."""
    return {key.removeprefix("best_"): value for key, value in self.summary().items()
            if not key.endswith(("_epoch", "_step")) and isinstance(value, (int, float))}


def _strict(value: Any) -> Any:
  """``value`` with every non-finite float replaced by None (strict JSON has no NaN)."""
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, Mapping):
    return {key: _strict(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [_strict(item) for item in value]
  return value


def write_json(path: store.PathLike, value: Any, fence: fenced.Fence = fenced.UNFENCED) -> None:
  """Writes ``value`` to ``path`` as strict JSON (NaN and infinities become null), atomically,
  through ``fence`` (see :mod:`cfl_jax.store.fenced`).

  A reader (or a run killed mid-write) sees either the old file or the new one, never a torn one
  (see :func:`cfl_jax.store.write_atomic`); ``path`` may be in a bucket.

  Examples:
    >>> import json, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), 'summary.json')
    >>> write_json(path, {'loss': float('nan'), 'step': 3})
    >>> json.load(open(path))
    {'loss': None, 'step': 3}
  """
  fence.write_atomic(path, json.dumps(_strict(value), indent=1, allow_nan=False))


def _jsonl(records: Sequence[Mapping[str, Any]]) -> str:
  return "".join(json.dumps(_strict(record), allow_nan=False) + "\n" for record in records)


def read_metrics(path: store.PathLike) -> list[dict[str, Any]]:
  """The records of a ``metrics.jsonl`` file (local or in a bucket), in order.

  A torn last line (a run killed while appending) is dropped with a warning; a damaged line
  anywhere else is an error naming the file and the line.

  Raises:
    ValueError: for a line before the last that is not a JSON object.
  """
  lines = [line for line in store.as_path(path).read_text().splitlines() if line.strip()]
  records = []
  for number, line in enumerate(lines, start=1):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as error:
      if number < len(lines):
        raise ValueError(f"{path}, line {number}, is not valid JSON ({error}).") from None
      logging.warning("Dropping the torn last line of %s (a run stopped while writing it).",
                      path)
  return records


class RunFiles:
  """``config.json``, ``metrics.jsonl`` (one JSON object per line), TensorBoard events under
  ``tensorboard/`` (scalars ``train/<metric>``, ``eval/<metric>`` and the best so far,
  ``best/<metric>``: see :meth:`RunFiles.append_best`) and ``summary.json``.

  Call :meth:`keep_metrics_until` once before appending (it opens the event writer), :meth:`sync`
  before each checkpoint save and :meth:`close` at the end.

  On a local disk records are appended to ``metrics.jsonl`` as they come and TensorBoard writes
  its event files in place. An object store has no append, so there both are kept in a local
  staging directory and uploaded by :meth:`sync` (each file one atomic object write, retried
  through transient store errors) before every checkpoint is saved and at :meth:`close`: the whole
  log, and each event file once, when it is complete. Each sync completes the event file it
  began with (see :meth:`sync`), so a run has one event file per checkpoint and session.
  A checkpoint therefore exists only once the records up to its step are in the workdir: a run
  stopped (or a VM lost) at any moment leaves the records up to its newest checkpoint or beyond,
  and the resumed run drops those beyond (:meth:`keep_metrics_until`), which are exactly the
  steps it computes (and logs) again. The upload rewrites the whole log once per checkpoint,
  never per log step: a few bytes per logged step, next to the checkpoint's size.

  Every write into the workdir goes through ``fence`` (the run's lease, see
  :mod:`cfl_jax.store.fenced`): once the lease has run out, each one raises its error instead.
  (Locally TensorBoard writes its events in place; a local lock lasts as long as the process.)
  """

  def __init__(self, workdir: store.PathLike, *, enabled: bool,
               fence: fenced.Fence = fenced.UNFENCED):
    self.workdir = store.as_path(workdir)
    self.enabled = enabled
    self._fence = fence
    self._local = store.is_local(workdir)
    self._events = None
    self._records: list[dict[str, Any]] = []  # object stores: the whole log, uploaded by sync
    self._staging = None
    self._store_failed = False  # a sync gave up: close() then uploads nothing more
    if enabled:
      fence.call(f"creating {self.workdir}",
                 lambda: self.workdir.mkdir(parents=True, exist_ok=True))
      if not self._local:
        self._staging = tempfile.TemporaryDirectory(prefix="cfl_jax_run_files_")

  def _path(self, name: str) -> epath.Path:
    return self.workdir / name

  def write_config(self, config: Mapping[str, Any]) -> None:
    """Writes ``config.json`` (atomically, as every JSON file here: see :func:`write_json`)."""
    if self.enabled:
      write_json(self._path("config.json"), config, self._fence)

  def write_summary(self, summary: Mapping[str, Any]) -> None:
    """Writes ``summary.json``."""
    if self.enabled:
      write_json(self._path("summary.json"), summary, self._fence)

  def keep_metrics_until(self, step: int) -> list[dict[str, Any]]:
    """Drops the records after ``step``, the checkpoint resumed from, from ``metrics.jsonl``
    and (by TensorBoard's purge step) from the event files; returns the records kept (none in a
    disabled writer)."""
    if not self.enabled:
      return []
    # The session's first event file: its purge step hides every earlier session's events after
    # `step`, also on a restart from step 0.
    self._events = self._event_writer(purge_step=step + 1)
    path = self._path("metrics.jsonl")
    records = store.retrying(f"reading {path}",
                               lambda: read_metrics(path) if path.exists() else None)
    if records is None:
      return []
    kept = [record for record in records if record["step"] <= step]
    if self._local:
      self._fence.write_atomic(path, _jsonl(kept))
    else:
      self._records = list(kept)
    return kept

  def _event_writer(self, purge_step: int | None = None):
    """A TensorBoard writer on a new event file, named after every earlier one (event file names
    carry only the second, and TensorBoard reads the files in name order)."""
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    events = (epath.Path(self._staging.name) / "tensorboard" if self._staging is not None
              else self._path("tensorboard"))
    return SummaryWriter(os.fspath(events), purge_step=purge_step,
                         filename_suffix=f".{time.time_ns()}.{os.getpid()}")

  def append_metrics(self, record: Mapping[str, Any]) -> None:
    """Appends one JSON line to ``metrics.jsonl`` and its numbers to TensorBoard.

    ``record`` holds ``step`` and ``split`` (``'train'`` or ``'eval'``); its other numeric
    entries become the scalars ``<split>/<key>``.
    """
    if not self.enabled:
      return
    if self._local:
      self._fence.check()
      with self._path("metrics.jsonl").open("a") as f:
        f.write(_jsonl([record]))
    else:
      self._records.append(dict(record))
    self._add_scalars(record["split"], record["step"],
                      {key: value for key, value in record.items() if key not in ("step", "split")})

  def append_best(self, step: int, best: BestMetrics) -> None:
    """Writes the best values so far (:meth:`BestMetrics.scalars`) to TensorBoard at ``step``:
    ``best/test_accuracy``, ``best/test_accuracy_at_best_validation``, ... (not to
    ``metrics.jsonl``, whose eval records hold everything they are computed from)."""
    if self.enabled:
      self._add_scalars("best", step, best.scalars())

  def _add_scalars(self, prefix: str, step: int, values: Mapping[str, Any]) -> None:
    """The numbers among ``values`` as TensorBoard scalars ``<prefix>/<key>``."""
    if self._events is not None:
      for key, value in values.items():
        if isinstance(value, (int, float)):
          self._events.add_scalar(f"{prefix}/{key}", value, step)

  def sync(self) -> None:
    """Puts every record and scalar so far in the workdir: closes this event file (TensorBoard's
    writer queues events for a thread and buffers them for minutes; only closing it writes out
    both), in an object store uploads it and ``metrics.jsonl``, and opens the next event file.

    Raises:
      StoreUnavailable: when the store stays unreachable past the retry budget (see
        :func:`cfl_jax.store.retrying`); the run must stop before its next checkpoint.
      WorkdirLockLost: when the run's lease ran out (see :mod:`cfl_jax.store.fenced`).
    """
    if not self.enabled or self._events is None:
      return
    if self._local:
      self._events.close()
    else:
      self._upload(self._events)
    self._events = self._event_writer()

  def _upload(self, events) -> None:
    """Closes ``events``, the open writer, then uploads the whole log and each staged event file
    (deleting it once uploaded); a failure marks the store failed (:meth:`close` then uploads
    nothing)."""
    self._events = None
    staged = epath.Path(events.logdir)
    events.close()  # writes out its queue: flush() leaves queued events unwritten
    try:
      self._fence.write_atomic(self._path("metrics.jsonl"), _jsonl(self._records))
      for event_file in sorted(staged.iterdir()):
        self._fence.write_atomic(self._path("tensorboard") / event_file.name,
                                 event_file.read_bytes())
        event_file.unlink()  # complete: never uploaded again
    except Exception:
      self._store_failed = True
      raise

  def close(self) -> None:
    """Uploads what :meth:`sync` uploads (unless a sync gave up on the store), then closes the
    TensorBoard writer."""
    if (self.enabled and not self._local and self._events is not None
        and not self._store_failed):
      self._upload(self._events)
    self.abandon()

  def abandon(self) -> None:
    """Closes the TensorBoard writer without uploading anything more (the workdir is no longer
    this run's)."""
    if self._events is not None:
      self._events.close()
      self._events = None
    if self._staging is not None:
      self._staging.cleanup()
      self._staging = None


def _number(value: float | None, digits: int, style: str = "f") -> str:
  """``value`` with ``digits`` digits; None (no finite value) as n/a; non-numbers as they are."""
  if value is None:
    return "n/a"
  if not isinstance(value, (int, float)):
    return "/".join(map(str, value)) if isinstance(value, list) else str(value)
  return format(value, f".{digits}{style}")


def _format(record: Mapping[str, Any], keys: Sequence[str]) -> str:
  """``'key value, ...'`` for the ``keys`` present in ``record`` (None shown as n/a)."""
  return ", ".join(f"{key} {_number(record[key], 4, 'g')}" for key in keys if key in record)


class Progress:
  """A tqdm bar (loss, accuracy, xi) when stderr is a terminal, plain log lines otherwise."""

  def __init__(self, *, total_steps: int, start_step: int, enabled: bool):
    self.total_steps = total_steps
    self._bar = None
    if enabled and sys.stderr.isatty():
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top (only on a terminal)
      # Size from shutil (which falls back to 80x24): tqdm draws nothing on a terminal that
      # reports 0 x 0, as a pseudo-terminal without a size does.
      columns, rows = shutil.get_terminal_size()
      self._bar = tqdm(total=total_steps, initial=start_step, unit="step", ncols=columns,
                       nrows=rows)
    self._enabled = enabled

  def advance(self) -> None:
    """One more step done."""
    if self._bar is not None:
      self._bar.update(1)

  def train(self, step: int, record: Mapping[str, Any]) -> None:
    """Shows the train metrics of a logging window."""
    if self._bar is not None:
      self._bar.set_postfix({name: _number(record[key], digits)
                             for name, key, digits in (("loss", "loss", 4), ("acc", "accuracy", 3),
                                                       ("xi", "xi", 3))})
    elif self._enabled:
      logging.info("step %d/%d: %s", step, self.total_steps,
                   _format(record, [*MEASURED, *sorted(set(record) - set(MEASURED))]))

  def eval(self, step: int, record: Mapping[str, Any]) -> None:
    """Shows an evaluation's accuracies."""
    if self._enabled:
      message = _format(record, ("test_accuracy", "validation_accuracy", "ema_test_accuracy",
                                 "balanced_accuracy", "many_shot_accuracy",
                                 "medium_shot_accuracy", "few_shot_accuracy", "test_loss",
                                 "expected_calibration_error"))
      write = self._bar.write if self._bar is not None else logging.info
      write(f"eval at step {step}: {message}")

  def close(self) -> None:
    """Closes the bar, if any."""
    if self._bar is not None:
      self._bar.close()
