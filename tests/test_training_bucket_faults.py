"""A run in a bucket that misbehaves as real buckets do: a few percent of 503/429 answers, outages
of a minute, uploads that fail past the retry budget, and checkpoints that are truly damaged.

Everything talks to the fault-injecting GCS emulator of the ``gcs_faults`` fixture; the runs are
``python -m experiments.train`` subprocesses, compared with an uninterrupted run on the local
disk: the same summary, every metrics record exactly once, every TensorBoard scalar once a step.
The subprocesses get a user's environment (only the emulator's variables for the store): they
run on the storage clients the runner chooses itself.
"""

import json
import os
import signal
import time
import uuid

import aiohttp
from etils import epath
from gcsfs.retry import HttpError
from google.auth import exceptions as auth_exceptions
import jax.numpy as jnp
import numpy as np
import pytest

from cfl_jax import store
from cfl_jax.training import ConfigError, StoreUnavailable, reporting, train_and_evaluate
from cfl_jax.store import workdir_lock
from cfl_jax.training.train import Run
from cfl_jax.training.checkpointing import Checkpointer
from training_helpers import comparable, finish, start_trainer, tiny_config, user_environment
from training_helpers import tensorboard_scalars, wait_for

# 15 steps an epoch: checkpoints every 10 steps, records every 5, evaluations at 30 and 60.
_STEPS = 60
_CONFIG = tiny_config(num_train_steps=_STEPS, checkpoint_every_steps=10, log_every_steps=5,
                      eval_every_epochs=2, max_to_keep=3)


pytestmark = pytest.mark.usefixtures("runner_subprocesses_share_the_module_cache")


@pytest.fixture
def bucket_dir(gcs_bucket):
  """A fresh ``gs://`` prefix for one test."""
  return epath.Path(f"{gcs_bucket}/{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The local run every bucket run must end on: ``(workdir, summary)``."""
  workdir = str(tmp_path_factory.mktemp("local"))
  return workdir, train_and_evaluate(_CONFIG, workdir)


def _start(workdir, env: dict[str, str] | None = None):
  """The runner on ``_CONFIG`` in ``workdir``, in a user's environment updated with ``env``."""
  return start_trainer(os.fspath(workdir), _CONFIG, env=user_environment(**(env or {})),
                       inherit_environment=False)


def _faults_on(prefix: str) -> str:
  """The fault plan's ``match`` for the requests of one workdir (and the bucket listings): every
  object of the run but the workdir lock, whose conditional writes are the lock's own tests'."""
  return rf" {prefix}/(?!\.lock)|^GET /storage/v1/b/[^/]+/o $"


def _committed(workdir: epath.Path, step: int) -> bool:
  return (workdir / "checkpoints" / str(step) / "commit_success.txt").exists()


def _steps(workdir: epath.Path) -> list[int]:
  """The steps of the checkpoint directories, committed or not."""
  directory = workdir / "checkpoints"
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _newest_committed(workdir: epath.Path) -> int:
  return max(step for step in _steps(workdir) if _committed(workdir, step))


def _assert_ends_as_the_local_run(workdir: epath.Path, uninterrupted, tmp_path, faults) -> None:
  """The bucket run's summary, records and TensorBoard scalars equal the local run's, read with
  the store's faults cleared (the reads are the test's, not the run's)."""
  faults.clear()
  reference_dir, reference_summary = uninterrupted
  assert comparable(_read_json(workdir / "summary.json")) == comparable(reference_summary)
  assert _read_json(workdir / "config.json") == _read_json(f"{reference_dir}/config.json")
  records = reporting.read_metrics(workdir / "metrics.jsonl")
  reference = reporting.read_metrics(f"{reference_dir}/metrics.jsonl")
  assert [(r["step"], r["split"]) for r in records] == [(r["step"], r["split"])
                                                        for r in reference]
  assert records == reference  # every record exactly once, step by step
  scalars = tensorboard_scalars(workdir / "tensorboard", tmp_path / "events")
  # Each step once, the same values.
  assert scalars == tensorboard_scalars(f"{reference_dir}/tensorboard"), _per_file(
      tmp_path / "events")
  assert [step for step, _ in scalars["train/loss"]] == list(range(5, _STEPS + 1, 5))
  assert not (workdir / "damaged_checkpoints").exists()


def _read_json(path) -> dict:
  return json.loads(epath.Path(path).read_text())


def _stopped_with_one_line(code: int, output: str) -> str:
  """The one error line a stopped run ends with (exit status 1, no traceback)."""
  assert code == 1 and "Traceback" not in output, output[-3000:]
  line = output.strip().splitlines()[-1]
  assert line.startswith("experiments.train: error: "), output[-3000:]
  return line


def _per_file(logdir) -> str:
  """Each event file's size and scalar steps by tag: where a scalar went missing."""
  lines = []
  for index, path in enumerate(sorted(logdir.iterdir())):
    alone = logdir.parent / "by_file" / str(index)  # a directory holding this file only
    alone.mkdir(parents=True)
    (alone / path.name).write_bytes(path.read_bytes())
    steps = {tag: [step for step, _ in series]
             for tag, series in tensorboard_scalars(alone).items()}
    lines.append(f"{path.name} ({path.stat().st_size} bytes): {steps}")
  return "\n".join(lines)


def _relaunch_ends_as_the_local_run(workdir: epath.Path, uninterrupted, tmp_path,
                                    faults) -> None:
  """A relaunch resumes from the newest committed checkpoint and ends on the local result."""
  newest = _newest_committed(workdir)
  code, output = finish(_start(workdir), timeout=180)
  assert code == 0, output[-3000:]
  assert _read_json(workdir / "summary.json")["resumed_from_step"] == newest
  _assert_ends_as_the_local_run(workdir, uninterrupted, tmp_path, faults)


# The retry helper: transient errors only, within the budget.

def test_only_transient_store_errors_are_retried_and_only_within_the_budget(caplog):
  transient = [HttpError({"code": 503, "message": "Service Unavailable"}),
               HttpError({"code": 429, "message": "Too Many Requests"}),
               aiohttp.ServerDisconnectedError(), ConnectionResetError(), TimeoutError(),
               auth_exceptions.TransportError("no route"), auth_exceptions.RefreshError("expired"),
               ValueError("UNAVAILABLE: HTTP response code: 503")]  # TensorStore, through orbax
  answers = [HttpError({"code": 412, "message": "Precondition Failed"}),
             HttpError({"code": 404, "message": "Not Found"}), FileNotFoundError("gone"),
             FileExistsError("gs://b/.lock"), PermissionError("denied"),
             OSError("Forbidden: b/cfl-jax-test/o"), ValueError("NOT_FOUND: no such key")]
  assert [store.is_transient(error) for error in transient] == [True] * len(transient)
  assert [store.is_transient(error) for error in answers] == [False] * len(answers)
  try:
    try:
      raise ConnectionResetError("reset by peer")
    except ConnectionResetError as cause:
      raise RuntimeError("orbax: restore failed") from cause
  except RuntimeError as wrapped:
    assert store.is_transient(wrapped)

  calls = []

  def fails_twice():
    calls.append(time.monotonic())
    if len(calls) <= 2:
      raise HttpError({"code": 503, "message": "Service Unavailable"})
    return "read"

  with caplog.at_level("WARNING"):
    assert store.retrying("reading x", fails_twice, budget=30) == "read"
  assert len(calls) == 3 and calls[2] - calls[0] >= 2.9  # waited 1 s, then 2 s
  assert caplog.text.count("Store error while reading x (Service Unavailable, 503)") == 2
  with pytest.raises(FileNotFoundError):  # an answer, not an outage: raised at once
    store.retrying("reading y", lambda: open("/nonexistent/y"), budget=30)

  def unreachable():
    raise aiohttp.ServerDisconnectedError()

  with pytest.raises(StoreUnavailable, match=r"^The store kept failing while reading z for 0 s "
                                             r"\(unavailable: Server disconnected\)\. Nothing "
                                             "was lost"):
    store.retrying("reading z", unreachable, budget=0)



@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_bad_retry_budget_in_the_environment_is_a_config_error(monkeypatch, value):
  monkeypatch.setenv(store.RETRY_SECONDS_VARIABLE, value)
  with pytest.raises(ConfigError, match=f"CFL_JAX_STORE_RETRY_SECONDS='{value}' is not a number"):
    Run.create(tiny_config())

# (a) A few percent of 503/429 answers, before and after they take effect.

def test_a_run_under_store_faults_ends_as_the_uninterrupted_local_run(bucket_dir, gcs_faults,
                                                                     uninterrupted, tmp_path):
  gcs_faults.set(seed=0, rate=0.03, statuses=[503, 429], after_effect=0.5,
                 match=_faults_on(bucket_dir.name))
  code, output = finish(_start(bucket_dir), timeout=240)
  counts = gcs_faults.counts()
  print("faults injected:", counts)
  assert code == 0, output[-3000:]
  assert counts["refused"] >= 3 and counts["failed_after_effect"] >= 3, counts
  _assert_ends_as_the_local_run(bucket_dir, uninterrupted, tmp_path, gcs_faults)



def test_two_hard_kills_and_relaunches_on_a_faulty_store_end_as_the_local_run(
    bucket_dir, gcs_faults, uninterrupted, tmp_path):
  """SIGKILL twice mid-run while 3 % of every request of the workdir fails, its lock's included:
  each relaunch takes the dead run's lock over (short lock timings) and resumes from the newest
  committed checkpoint; the last ends on the local result, every record exactly once."""
  gcs_faults.set(seed=1, rate=0.03, statuses=[503, 429], after_effect=0.5,
                 match=rf" {bucket_dir.name}/|^GET /storage/v1/b/[^/]+/o $")
  env = {workdir_lock.HEARTBEAT_VARIABLE: "1", workdir_lock.STALE_VARIABLE: "5"}
  workdir, resumed_from = os.fspath(bucket_dir), []
  for _ in range(2):
    previous = max(_committed_steps(bucket_dir), default=0)
    process = _start(workdir, env)
    try:
      wait_for(lambda after=previous: max(_committed_steps(bucket_dir), default=0) > after,
               process, timeout=240)
    finally:
      process.kill()  # SIGKILL: no checkpoint of its own, its lock left behind
      process.wait()
    assert not (bucket_dir / "summary.json").exists()  # killed mid-run
    resumed_from.append(max(_committed_steps(bucket_dir)))
  code, output = finish(_start(workdir, env), timeout=300)
  counts = gcs_faults.counts()
  print("faults injected:", counts, "; killed after checkpoints", resumed_from)
  assert code == 0, output[-3000:]
  assert "Taking over the stale lock of" in output, output[-3000:]
  assert counts["refused"] + counts["failed_after_effect"] >= 5, counts
  assert _read_json(bucket_dir / "summary.json")["resumed_from_step"] == resumed_from[-1]
  _assert_ends_as_the_local_run(bucket_dir, uninterrupted, tmp_path, gcs_faults)


def _committed_steps(workdir: epath.Path) -> list[int]:
  """The committed checkpoint steps, none before the checkpoint directory exists, listed anew
  (another process writes them: gcsfs's listing cache would hide them)."""
  store.filesystem(workdir)[0].invalidate_cache()
  if not (workdir / "checkpoints").exists():
    return []
  return [step for step in _steps(workdir) if _committed(workdir, step)]

# (e) One file system instance: what a move removes, epath (and so orbax) no longer lists.

def test_a_checkpoint_moved_aside_is_gone_for_orbax_and_its_step_saved_again(bucket_dir):
  checkpoints = bucket_dir / "checkpoints"
  first = Checkpointer(checkpoints, max_to_keep=3)
  first.save(10, {"w": jnp.ones(3)}, {"config": {}})
  first.close()
  assert [p.name for p in checkpoints.iterdir()] == ["10"]  # epath has listed it
  store.move_tree(checkpoints / "10", bucket_dir / "aside" / "10")
  assert not (checkpoints / "10").exists() and not checkpoints.exists()  # no stale listing
  again = Checkpointer(checkpoints, max_to_keep=3)
  assert again.latest_step() is None
  again.save(10, {"w": jnp.zeros(3)}, {"config": {}})
  again.close()
  state, _ = again.restore(10, {"w": jnp.zeros(3)}, {})
  np.testing.assert_array_equal(state["w"], np.zeros(3))
  assert store.relative_files(bucket_dir / "aside" / "10")  # the first one, kept aside


# (b) and (c): outages. The run rides one out within the retry budget, or stops with one line;
# either way no checkpoint is set aside and a relaunch ends on the local result.

def test_an_outage_longer_than_the_retry_budget_in_mid_training(bucket_dir, gcs_faults,
                                                                uninterrupted, tmp_path):
  # The budget (4 s here, 180 s by default; time-outs of 2 s) and the outage (12 s) keep the
  # test short; what counts is that the outage outlasts the budget and a request in flight.
  budget, outage = 4, 12
  process = _start(bucket_dir, {store.RETRY_SECONDS_VARIABLE: str(budget)})
  wait_for(lambda: _committed(bucket_dir, 10), process, timeout=180)
  gcs_faults.set(outages=[[0, outage]])
  started = time.monotonic()
  code, output = finish(process, timeout=300)
  took = time.monotonic() - started
  print(f"outage in mid-training: exit {code} after {took:.0f} s,", gcs_faults.counts(),
        output.strip().splitlines()[-1])
  assert gcs_faults.counts()["dropped_in_outage"] > 0
  if code == 0:  # rode it out
    _assert_ends_as_the_local_run(bucket_dir, uninterrupted, tmp_path, gcs_faults)
    return
  line = _stopped_with_one_line(code, output)
  assert "The store kept failing while" in line or "Could not save checkpoint" in line, line
  assert took < budget + 30  # the stall bound: the budget + 30 s
  time.sleep(max(0.0, started + outage - time.monotonic()))  # the outage ends, then we look
  print("checkpoint directories:", _steps(bucket_dir), "newest committed:",
        _newest_committed(bucket_dir))
  assert not (bucket_dir / "damaged_checkpoints").exists()
  _relaunch_ends_as_the_local_run(bucket_dir, uninterrupted, tmp_path, gcs_faults)


# A relaunch's restore under two faults: the answers to the reads of the checkpoint's items (its
# progress record, read by gcsfs, and its arrays) are lost (the connection closes), or the reads
# of its array data (by TensorStore) stall unanswered. The lock, the run files and the checkpoint
# listing still answer, so the outage is the restore's. The budget is scaled down to 4 s
# (time-outs of 2 s, see cfl_jax.store.clients): the relaunch stops within budget + 30 s of the
# first failed read, with one line, and moves nothing.
_RESTORE_FAULTS = {
    "lost answers": lambda name: {"lose": [{
        "match": rf"^GET \S+ {name}/checkpoints/\d+/(progress|state)/", "count": 10**6}]},
    # The array data files: TensorStore's alone (gcsfs reads the metadata beside them).
    "stalled array reads": lambda name: {
        "stalls": [[0, 120]], "stall_match": rf"^GET \S+ {name}/checkpoints/\d+/state/.*\bd/"},
}


def _stops_in_time(process, gcs_faults, budget, what, since):
  """The one line ``process`` stops with, within ``budget`` + 30 s of now (when the fault was
  first met); the faults are cleared."""
  met = time.monotonic()
  code, output = finish(process, timeout=120)
  took = time.monotonic() - met
  print(f"{what}: stopped {took:.0f} s after {since},", gcs_faults.counts(),
        output.strip().splitlines()[-1])
  gcs_faults.clear()
  line = _stopped_with_one_line(code, output)
  assert took < budget + 30
  return line


@pytest.mark.parametrize("fault", list(_RESTORE_FAULTS))
def test_a_fault_during_a_relaunchs_restore_stops_it_in_time_and_sets_nothing_aside(
    bucket_dir, gcs_faults, uninterrupted, tmp_path, fault):
  """A run preempted in a bucket (SIGTERM: it saves and stops), relaunched into a fault during
  its restore, then relaunched again: that one resumes and ends as the uninterrupted local run."""
  first = _start(bucket_dir)
  wait_for(lambda: _committed(bucket_dir, 10), first, timeout=180)
  first.send_signal(signal.SIGTERM)
  code, output = finish(first)
  assert code == 0 and "Preempted after step" in output, output[-3000:]
  checkpoints = _steps(bucket_dir)
  gcs_faults.set(**_RESTORE_FAULTS[fault](bucket_dir.name))
  budget = 4.0
  relaunch = _start(bucket_dir, {store.RETRY_SECONDS_VARIABLE: str(budget)})
  wait_for(lambda: gcs_faults.counts()["answers_lost"] + gcs_faults.counts()["stalled"] > 0,
           relaunch, timeout=120)
  line = _stops_in_time(relaunch, gcs_faults, budget, f"{fault} during the restore",
                        "the first failed read")
  assert f"The store kept failing while reading checkpoint {bucket_dir}/checkpoints/" in line, line
  assert _steps(bucket_dir) == checkpoints and not (bucket_dir / "damaged_checkpoints").exists()
  _relaunch_ends_as_the_local_run(bucket_dir, uninterrupted, tmp_path, gcs_faults)


def test_a_store_stalling_during_a_save_stops_the_run_in_time(bucket_dir, gcs_faults,
                                                              uninterrupted, tmp_path):
  """From checkpoint 10 on, every request for a checkpoint object (orbax's directory work through
  gcsfs, its arrays through TensorStore) is accepted and never answered: the next save fails
  within the time-outs (2 s at a 4 s budget), and the run stops with one line, within
  budget + 30 s; a relaunch after the stall ends on the local result."""
  budget = 4.0
  process = _start(bucket_dir, {store.RETRY_SECONDS_VARIABLE: str(budget)})
  wait_for(lambda: _committed(bucket_dir, 10), process, timeout=180)
  gcs_faults.set(stalls=[[0, 120]], stall_match=rf" {bucket_dir.name}/checkpoints/")
  wait_for(lambda: gcs_faults.counts()["stalled"] > 0, process, timeout=60)
  line = _stops_in_time(process, gcs_faults, budget, "stall during a save",
                        "the first stalled request")
  assert "Could not save checkpoint" in line or "The store kept failing while" in line, line
  assert not (bucket_dir / "damaged_checkpoints").exists()
  _relaunch_ends_as_the_local_run(bucket_dir, uninterrupted, tmp_path, gcs_faults)


# (d) The records up to a checkpoint are in the workdir before the checkpoint is started.

def test_an_upload_failing_past_the_budget_stops_the_run_before_its_checkpoint(
    bucket_dir, gcs_faults, uninterrupted, tmp_path):
  process = _start(bucket_dir, {store.RETRY_SECONDS_VARIABLE: "1"})
  wait_for(lambda: _committed(bucket_dir, 10), process, timeout=180)
  # From now on every upload of an event file fails. A sync uploads metrics.jsonl first: the one
  # that fails leaves the bucket with records beyond the newest checkpoint, as a VM lost between
  # the upload and the commit does.
  gcs_faults.set(rate=1.0, statuses=[503], after_effect=0.0,
                 match=rf"^POST .* {bucket_dir.name}/tensorboard/")
  code, output = finish(process, timeout=180)
  print("failing uploads:", gcs_faults.counts(), output.strip().splitlines()[-1])
  line = _stopped_with_one_line(code, output)
  assert f"The store kept failing while writing {bucket_dir}/tensorboard/" in line, line
  gcs_faults.clear()
  newest = _newest_committed(bucket_dir)
  uploaded = reporting.read_metrics(bucket_dir / "metrics.jsonl")
  assert uploaded[-1]["step"] > newest  # the failed sync's records reached the bucket,
  assert not (bucket_dir / "checkpoints" / str(uploaded[-1]["step"])).exists()  # its save never
  _relaunch_ends_as_the_local_run(bucket_dir, uninterrupted, tmp_path, gcs_faults)


# (f) A checkpoint that reads but does not decode is still set aside.

# Orbax leaves a coroutine of the failed read behind; harmless, but pytest reports it.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_truly_damaged_checkpoints_are_still_moved_aside(bucket_dir, uninterrupted, tmp_path,
                                                         caplog):
  train_and_evaluate(_CONFIG, os.fspath(bucket_dir))
  assert _steps(bucket_dir) == [40, 50, 60]
  arrays = bucket_dir / "checkpoints" / "60" / "state"
  for name in store.relative_files(arrays):
    if "/d/" in name:
      (arrays / name).unlink()  # the array data files: a checkpoint with missing parts
  progress = bucket_dir / "checkpoints" / "50" / "progress"
  for name in store.relative_files(progress):
    (progress / name).write_text('{"config": ')  # a torn progress record
  with caplog.at_level("WARNING"):
    summary = train_and_evaluate(_CONFIG, os.fspath(bucket_dir))
  assert summary["resumed_from_step"] == 40
  assert sorted(p.name.split("-")[0] for p in (bucket_dir / "damaged_checkpoints").iterdir()) == [
      "50", "60"]
  assert caplog.text.count("Skipped the damaged checkpoint") == 2
  assert _steps(bucket_dir) == [40, 50, 60]
  records = reporting.read_metrics(bucket_dir / "metrics.jsonl")
  assert records == reporting.read_metrics(f"{uninterrupted[0]}/metrics.jsonl")
  assert comparable(summary) == comparable(uninterrupted[1])
