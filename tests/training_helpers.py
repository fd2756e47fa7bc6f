"""Shared pieces of the end-to-end training tests: tiny configs and the runner as a subprocess."""

from collections.abc import Mapping
import json
import os
import socket
import subprocess
import sys
import time

from etils import epath
import orbax.checkpoint as ocp
from tensorboard.backend.event_processing import event_accumulator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides) -> dict:
  """A few-second digits run: batch 32 (15 steps per epoch), frequent logs and checkpoints.

  ``init_key`` is the schema's default, stated: the runner's default config
  (experiments/configs/digits.py) pins ``'rbg_v0'`` for its recorded study, and a runner
  subprocess given these overrides must build the same run as ``train_and_evaluate`` in-process.
  """
  config = {"name": "tiny", "batch_size": 32, "eval_batch_size": 512, "num_train_steps": 30,
            "log_every_steps": 5, "eval_every_epochs": 1, "checkpoint_every_steps": 10,
            "max_to_keep": 2, "init_key": "stream"}
  config.update(overrides)
  return config


def _flags(config: Mapping, prefix: str = "--config.") -> list[str]:
  """``--config.a.b=value`` overrides for every leaf of a nested dict."""
  flags = []
  for key, value in config.items():
    if isinstance(value, Mapping):
      flags += _flags(value, f"{prefix}{key}.")
    else:
      flags.append(f"{prefix}{key}={value}")
  return flags


def start_trainer(workdir: str | None, config: Mapping, *extra_flags: str,
                  env: Mapping[str, str] | None = None, cwd: str = REPO,
                  preexec_fn=None, inherit_environment: bool = True) -> subprocess.Popen:
  """``python -m experiments.train`` with ``config`` as flag overrides, stdout+stderr piped.

  ``extra_flags`` come first, so a ``--config=FILE`` among them precedes the overrides;
  ``preexec_fn`` runs in the child before the trainer starts (e.g. to set resource limits).
  The child's environment is this process's updated with ``env``, or ``env`` alone (and
  ``PYTHONPATH``) when not ``inherit_environment``.
  """
  command = [sys.executable, "-m", "experiments.train", *extra_flags, *_flags(config)]
  if workdir is not None:
    command.append(f"--workdir={workdir}")
  environment = {**(os.environ if inherit_environment else {}), "PYTHONPATH": REPO,
                 **(env or {})}
  return subprocess.Popen(command, cwd=cwd, env=environment, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, preexec_fn=preexec_fn)


#: What a user of the GCS emulator sets (the runner chooses its storage clients itself).
EMULATOR_VARIABLES = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL",
                      "GOOGLE_AUTH_TOKEN_FOR_TESTING")


def user_environment(**extra: str) -> dict[str, str]:
  """This process's environment as a user's would be: ``PATH``, ``HOME``, the emulator's
  variables (:data:`EMULATOR_VARIABLES`), and for test speed only the fake CPU devices and JAX
  settings (the module's compilation cache); no storage client switch. Then ``extra``."""
  kept = {key: value for key, value in os.environ.items()
          if key in ("PATH", "HOME", "XLA_FLAGS", "TF_CPP_MIN_LOG_LEVEL") + EMULATOR_VARIABLES
          or key.startswith("JAX_")}
  return {**kept, "PYTHONPATH": REPO, **extra}


def finish(process: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
  """Waits (killing the process after ``timeout`` seconds); returns (returncode, output)."""
  try:
    output, _ = process.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    process.kill()
    output, _ = process.communicate()
    raise AssertionError(f"trainer timed out after {timeout}s:\n{output[-3000:]}") from None
  return process.returncode, output


def wait_for(condition, process: subprocess.Popen, timeout: float = 120) -> None:
  """Polls ``condition()`` until true; fails if the process exits first or time runs out."""
  deadline = time.time() + timeout
  while not condition():
    if process.poll() is not None:
      raise AssertionError(f"trainer exited ({process.returncode}) before the condition held:\n"
                           f"{process.stdout.read()[-3000:]}")
    if time.time() > deadline:
      process.kill()
      raise AssertionError("condition not reached in time")
    time.sleep(0.01)


def free_port() -> int:
  """A free TCP port on loopback (for a ``jax.distributed`` coordinator or a local server)."""
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line, parse_constant=_refuse) for line in f]


def read_summary(workdir: str) -> dict:
  """``summary.json``, parsed strictly (NaN or Infinity tokens fail the test)."""
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f, parse_constant=_refuse)


def tensorboard_scalars(logdir, local_copy=None) -> dict[str, list[tuple[int, float]]]:
  """Every scalar series in ``logdir``, read by TensorBoard's own event reader; a ``logdir`` in a
  bucket is first copied into the local directory ``local_copy``."""
  logdir = epath.Path(logdir)
  if local_copy is not None:
    copy = epath.Path(local_copy)
    copy.mkdir(parents=True, exist_ok=True)
    for event_file in logdir.iterdir():
      (copy / event_file.name).write_bytes(event_file.read_bytes())
    logdir = copy
  events = event_accumulator.EventAccumulator(str(logdir))
  events.Reload()
  return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
          for tag in events.Tags()["scalars"]}


def _refuse(token: str):
  raise AssertionError(f"not strict JSON: {token}")


def final_params(workdir: str) -> dict:
  """The parameters of the newest checkpoint, as host arrays."""
  directory = os.path.join(workdir, "checkpoints")
  step = max(int(name) for name in os.listdir(directory) if name.isdigit())
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(os.path.join(directory, str(step), "state"))["params"]


def comparable(summary: Mapping) -> dict:
  """A summary without the entries that depend on how the run was executed."""
  return {key: value for key, value in summary.items()
          if key not in ("wall_seconds", "session_wall_seconds", "resumed_from_step",
                         "num_processes")}
