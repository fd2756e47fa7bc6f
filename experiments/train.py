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

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from cfl_jax.training import sharding
from cfl_jax.training import train_and_evaluate

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "digits.py")

_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "Experiment config file (get_config() returns a ConfigDict).",
    lock_config=True)
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


class _QuietOrbax(python_logging.Filter):
  """Drops orbax's per-save INFO chatter; its warnings and errors still show."""

  def filter(self, record: python_logging.LogRecord) -> bool:
    return record.levelno >= python_logging.WARNING or "/orbax/" not in record.pathname


def _configure_devices() -> None:
  """Applies --cpu_devices and --distributed; must run before JAX initialises its backends."""
  sharding.use_cpu_devices(_CPU_DEVICES.value)
  if _DISTRIBUTED.value:
    jax.distributed.initialize(
        coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value, initialization_timeout=_INIT_TIMEOUT.value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.get_absl_handler().addFilter(_QuietOrbax())
  config = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join("runs", config.name)
  _configure_devices()
  if jax.process_index() != 0:  # one process speaks for the run; the others only warn
    logging.set_verbosity(logging.WARNING)
  logging.info("Training %s in %s on %d %s device(s), %d process(es).", config.name, workdir,
               jax.device_count(), jax.devices()[0].platform, jax.process_count())
  summary = train_and_evaluate(config, workdir)
  if summary["preempted"]:
    return  # the loop logged where it stopped; exit status 0
  keys = ("test_accuracy", "balanced_accuracy", "many_shot_accuracy", "medium_shot_accuracy",
          "few_shot_accuracy", "loss", "train_steps", "wall_seconds")
  logging.info("Done: %s", json.dumps({key: summary[key] for key in keys}))


if __name__ == "__main__":
  app.run(main)
