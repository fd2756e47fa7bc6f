r"""Trains one experiment: ``python -m experiments.train [--config=FILE[:ARG]] [--workdir=DIR]``.

With no flags it runs the embedded default, ``experiments/configs/digits.py``, into
``./runs/<config.name>``. Any config key can be overridden (``--config.loss.gamma_hc=3``).
Re-running the same command resumes from the newest checkpoint in the workdir; SIGTERM saves a
checkpoint and exits with status 0.

CPU: unless ``XLA_FLAGS`` already sets ``--xla_force_host_platform_device_count`` (or
``JAX_NUM_CPU_DEVICES`` is set), the run splits each batch over ``--cpu_devices`` XLA host
devices (default 4, data parallel like GPUs), which uses several cores better than one XLA CPU
device does. ``--cpu_devices=1`` keeps a single device. GPU and TPU runs are unaffected.

Multi-host: pass ``--distributed`` on every host (``jax.distributed.initialize()`` detects TPU
pods, SLURM, Open MPI and Kubernetes), or name the cluster yourself:

  python -m experiments.train --distributed --coordinator_address=10.0.0.1:1234 \
      --num_processes=2 --process_id=0 ...
"""

import json
import logging as python_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from cfl_jax import training
from cfl_jax.store import agreement
from cfl_jax.training import sharding
from experiments import config_files

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "digits.py")

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory; default ./runs/<config.name>.")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 4, "XLA host devices to split CPU batches over, unless XLA_FLAGS sets it.",
    lower_bound=1)
_DISTRIBUTED = flags.DEFINE_boolean(
    "distributed", False, "Call jax.distributed.initialize() (multi-host runs).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (with --distributed).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes (with --distributed).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process (with --distributed).")
_INIT_TIMEOUT = flags.DEFINE_integer(
    "initialization_timeout", 300, "Seconds to wait for all processes (with --distributed).")


class _QuietLogs(python_logging.Filter):
  """Drops orbax's per-save INFO chatter, the tracebacks its threads (and asyncio, for the
  futures they leave behind) log when a save fails (the loop raises that failure, and the run
  stops with one message saying why), the tracebacks gcsfs logs when its own retries run out
  (:func:`cfl_jax.store.retrying` logs each store error in one line, and retries or stops; the
  workdir lock's heartbeat reports them in one line) and JAX's notes on absent backends (libtpu
  on a CPU machine); other warnings and errors still show."""

  def filter(self, record: python_logging.LogRecord) -> bool:
    from_orbax = "/orbax/" in record.pathname
    if record.levelno >= python_logging.WARNING:
      orphaned = record.name == "asyncio" and "never retrieved" in record.getMessage()
      from_gcsfs = record.name.startswith("gcsfs")
      return not ((from_orbax or orphaned or from_gcsfs) and record.exc_info)
    return not from_orbax and not record.getMessage().startswith("Unable to initialize backend")


def _ignore_closed_event_loops() -> None:
  """Drops the "Event loop is closed" reports of writes that finish after orbax gave up on a
  failed save (TensorStore sends them through ``sys.excepthook`` or ``sys.unraisablehook``);
  the failure itself stops the run with one message. Everything else is reported as usual."""
  report, report_unraisable = sys.excepthook, sys.unraisablehook

  def closed_loop(kind, value) -> bool:
    return kind is RuntimeError and str(value) == "Event loop is closed"

  def hook(kind, value, traceback):
    if not closed_loop(kind, value):
      report(kind, value, traceback)

  def unraisable_hook(unraisable):
    if not closed_loop(unraisable.exc_type, unraisable.exc_value):
      report_unraisable(unraisable)

  sys.excepthook, sys.unraisablehook = hook, unraisable_hook


def _fail(message: str, status: int, *, abandon_threads: bool = False) -> None:
  """Ends the run with ``message`` on stderr and no traceback.

  ``abandon_threads``: exit without waiting for background threads. A background save that
  failed in a store outage leaves orbax threads waiting (up to its 20-minute timeout) for
  signals of that save which never come; the run has already closed its files and released its
  lock, so nothing is left for them to do. A run that lost its lock leaves a save in flight
  unfinished: its commit would be refused, and its writes must stop with the process. Every
  process of the run gets the same error here, and they end in order (process 0 last, see
  :func:`cfl_jax.store.agreement.leave`).
  """
  if abandon_threads:
    agreement.leave(status, lambda: _report(message))
  _report(message)
  sys.exit(status)


def _report(message: str) -> None:
  # One write with its line break: print() writes the break apart (under PYTHONUNBUFFERED, as
  # in containers), and another writer to the stream (Gloo's notes on a multi-host run) could
  # land between the message and its end.
  sys.stderr.write(f"experiments.train: error: {message}\n")


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with a short message for a bad flag (exit 2); ``--help`` prints the
  flags and exits 0."""
  if any(arg in ("-h", "-?", "--help", "--helpshort", "--helpfull") for arg in argv[1:]):
    app.usage(shorthelp="--helpfull" not in argv, writeto_stdout=True, exitcode=0)
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    _fail(str(error), 2)
  except (AttributeError, KeyError, TypeError, ValueError) as error:  # --config.KEY overrides
    _fail_on_overrides(argv, error)


def _fail_on_overrides(argv: list[str], error: Exception) -> None:
  """Exits (status 2) naming every unknown ``--config.KEY`` of ``argv``, with hints."""
  spec = next((arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")),
              _DEFAULT_CONFIG)
  problems = config_files.unknown_overrides(argv, config_files.load(spec))
  _fail("; ".join(problems) if problems else f"bad --config flag: {error}", 2)


def _configure_devices() -> None:
  """Applies --cpu_devices and --distributed; must run before JAX initialises its backends."""
  sharding.use_cpu_devices(_CPU_DEVICES.value)
  if _DISTRIBUTED.value:
    jax.distributed.initialize(
        coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value, initialization_timeout=_INIT_TIMEOUT.value)


def _define_config_flag():
  """``--config`` (config_flags applies the ``--config.KEY`` overrides of ``sys.argv`` here)."""
  try:
    return config_flags.DEFINE_config_file(
        "config", _DEFAULT_CONFIG, "Experiment config file (get_config() returns a ConfigDict).",
        lock_config=True)
  except (AttributeError, KeyError, TypeError, ValueError) as error:
    _fail_on_overrides(sys.argv, error)


_CONFIG = _define_config_flag()

# Failures a user can act on: one message, no traceback, exit status 1.
_RUN_ERRORS = (training.ConfigError, training.CheckpointError, training.CheckpointSaveError,
               training.StoreUnavailable, training.WorkdirLocked, training.WorkdirLockLost,
               training.TrainingDiverged, agreement.HostFailed,
               FileNotFoundError, ModuleNotFoundError)


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])} (overrides look like "
          "--config.loss.gamma_hc=3)", 2)
  logging.get_absl_handler().addFilter(_QuietLogs())
  _ignore_closed_event_loops()
  config = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join("runs", config.name)
  _configure_devices()
  if jax.process_index() != 0:  # one process speaks for the run; the others only warn
    logging.set_verbosity(logging.WARNING)
  logging.info("Training %s in %s on %d %s device(s), %d process(es).", config.name, workdir,
               jax.device_count(), jax.devices()[0].platform, jax.process_count())
  try:
    # A process that fails inside orbax's barriers stops every process with its message.
    with agreement.watching_for_stops(_report):
      summary = training.train_and_evaluate(config, workdir)
  except _RUN_ERRORS as error:
    _fail(str(error), 1, abandon_threads=isinstance(
        error, (training.CheckpointSaveError, training.StoreUnavailable,
                training.WorkdirLockLost)))
  if summary["preempted"]:
    return  # the loop logged where it stopped; exit status 0
  keys = ("test_accuracy", "best_test_accuracy", "best_epoch", "best_ema_test_accuracy",
          "test_accuracy_at_best_validation", "balanced_accuracy", "many_shot_accuracy",
          "medium_shot_accuracy", "few_shot_accuracy", "loss", "train_steps", "wall_seconds")
  logging.info("Done: %s", json.dumps({key: summary[key] for key in keys if key in summary}))


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
