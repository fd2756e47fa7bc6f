"""Fencing: once a run's lease on its workdir has run out, it writes nothing more there.

Against the GCS emulator at scaled lock timings (heartbeat 1 s, stale after 4 s: a lease of
``4 - 1 - 0.04 = 2.96`` s after the last acknowledged heartbeat was sent). A lease is lost by
failing the lock's own requests (503s on ``.lock``) while every other request goes through, so
the store would accept the writes the fence must refuse. The last test cuts one run off the
store (a stalled proxy between it and the emulator) while a second run takes the workdir over,
and checks, from what the proxy forwarded, that the first wrote nothing after the takeover.
"""

import contextlib
import json
import os
import re
import time
import urllib.parse
import uuid

from etils import epath
import fsspec
import jax
import jax.numpy as jnp
import pytest

from cfl_jax import store
from cfl_jax.store import fenced, lock_object, workdir_lock
from cfl_jax.training import WorkdirLockLost, checkpointing, compilation_cache
from store_proxy import StoreProxy
from training_helpers import finish, start_trainer, tiny_config

pytestmark = pytest.mark.usefixtures("runner_subprocesses_share_the_module_cache")

_TIMINGS = {"heartbeat_seconds": 1.0, "stale_seconds": 4.0}
_LEASE = workdir_lock.lease_seconds(**_TIMINGS)


@pytest.fixture
def bucket_dir(gcs_bucket):
  """A fresh ``gs://`` prefix for one test."""
  return epath.Path(f"{gcs_bucket}/{uuid.uuid4().hex[:8]}")


def _lock_requests(workdir) -> str:
  """The fault-plan pattern of every request on ``workdir``'s lock object."""
  return rf"^\S+ \S+ {epath.Path(workdir).name}/\.lock$"


@contextlib.contextmanager
def _losing_lease(workdir, gcs_faults):
  """A lock on ``workdir`` whose heartbeats all fail once :func:`cut` is called; yields
  ``(lock, cut)``, ``cut()`` returning the monotonic time the failures began."""
  with workdir_lock.WorkdirLock(workdir, **_TIMINGS) as lock:
    def cut() -> float:
      gcs_faults.set(rate=1.0, statuses=[503], after_effect=0.0, match=_lock_requests(workdir))
      return time.monotonic()
    yield lock, cut
    gcs_faults.clear()


def test_the_default_lock_timings_follow_the_lease_formula():
  # The deployment guide's formula: lease = stale - (heartbeat + drift * stale), drift 1 %.
  heartbeat, stale = workdir_lock.HEARTBEAT_SECONDS, workdir_lock.STALE_SECONDS
  assert (heartbeat, stale, workdir_lock.CLOCK_DRIFT) == (15.0, 60.0, 0.01)
  assert workdir_lock.lease_seconds(heartbeat, stale) == pytest.approx(44.4)
  # Two heartbeats in a row may fail before the lease runs out, and a write admitted at its
  # last moment has a heartbeat's time to land before a rival may take over.
  assert workdir_lock.lease_seconds(heartbeat, stale) > 2 * heartbeat
  assert stale - workdir_lock.lease_seconds(heartbeat, stale) >= heartbeat


def test_the_fence_admits_writes_until_the_lease_runs_out_then_refuses_them(bucket_dir,
                                                                           gcs_faults):
  note = bucket_dir / "note.txt"
  with _losing_lease(bucket_dir, gcs_faults) as (lock, cut):
    lock.fence.write_atomic(note, "0")
    cut_at = time.monotonic()
    cut()
    written, landed_at, refused_at = 0, cut_at, None
    while refused_at is None:
      try:
        lock.fence.write_atomic(note, str(written + 1))
        written, landed_at = written + 1, time.monotonic()
        time.sleep(0.05)
      except WorkdirLockLost as error:
        refused_at = time.monotonic()
        message = str(error)
      assert time.monotonic() - cut_at < 2 * _LEASE, "the fence never closed"
    print(f"after the heartbeat started failing, the last fenced write landed at "
          f"{landed_at - cut_at:.2f} s and the next was refused at {refused_at - cut_at:.2f} s "
          f"(lease {_LEASE:.2f} s)")
    # The last acknowledged heartbeat was sent at most a heartbeat (and an answer) before the
    # cut, so the lease ends between lease - heartbeat and lease after it: no write lands later
    # (0.2 s: the time to see the answer), and the refusal comes by then, or a retry's first
    # back-off (1 s) later when an attempt under way was cancelled at the end of the lease.
    assert landed_at - cut_at < _LEASE + 0.2
    assert _LEASE - _TIMINGS["heartbeat_seconds"] - 0.5 < refused_at - cut_at < _LEASE + 1.5
    # The refused write never landed, or it was the attempt under way when the lease ended:
    # cancelled then, its request may already have reached the store (the heartbeat of margin
    # a rival waits beyond the lease is for such a write; seen once in CI, refused at 3.94 s).
    kept = note.read_text()
    assert written > 0 and kept in (str(written), str(written + 1)), (kept, written)
    assert message.startswith(f"This run lost the lock of the workdir {bucket_dir}: its "
                              "heartbeat has not reached the store for")
    with pytest.raises(WorkdirLockLost):  # lost for good
      lock.fence.remove_tree(bucket_dir)
  assert note.read_text() == kept  # nothing written after the refusal


def test_once_the_lease_ran_out_no_client_request_changes_the_store(bucket_dir, gcs_faults):
  """Orbax's directory work goes through gcsfs, not through our fence: before saving a step it
  deletes an unfinished directory of that step. Within fencing_requests every request that
  changes the store is the fence's to admit; reading goes on, and the lock's own requests
  pass (its release, after the lease ended)."""
  step = bucket_dir / "checkpoints" / "20"
  (step / "commit_success.txt").write_text("another run's commit")
  with _losing_lease(bucket_dir, gcs_faults) as (lock, cut), fenced.fencing_requests(lock.fence):
    (bucket_dir / "note.txt").write_text("admitted")  # epath's own write, as orbax's
    time.sleep(max(0.0, cut() + _LEASE + 0.2 - time.monotonic()))
    for change in (step.rmtree, lambda: (bucket_dir / "note.txt").write_text("late")):
      with pytest.raises(WorkdirLockLost, match="This run lost the lock"):
        change()
    assert (step / "commit_success.txt").read_text() == "another run's commit"
  assert (bucket_dir / "note.txt").read_text() == "admitted"
  assert not (bucket_dir / ".lock").exists()  # released: the lock's requests are outside


class _Lease:
  def __init__(self, seconds: float):
    self.end = time.monotonic() + seconds

  def lost(self):
    return RuntimeError("the lease ran out") if time.monotonic() > self.end else None

  def deadline(self):
    return self.end


def test_a_request_admitted_before_the_lease_ends_is_cancelled_then_not_retried(bucket_dir):
  """A stalled network holds an admitted upload; gcsfs would retry it once the network heals,
  after the lease. Fenced, the attempt is cancelled at the end of the lease and not retried."""
  proxy = StoreProxy(os.environ["STORAGE_EMULATOR_HOST"])
  client = fsspec.filesystem("gs", endpoint_url=proxy.url, skip_instance_cache=True)
  key = os.fspath(bucket_dir / "late.txt").removeprefix("gs://")
  try:
    proxy.cut(hold=True)
    started = time.monotonic()
    with fenced.fencing_requests(fenced.Fence(_Lease(1.0))):
      with pytest.raises(RuntimeError, match="the lease ran out"):
        client.pipe(key, b"late")
    ended = time.monotonic() - started
    proxy.heal()
    time.sleep(3.0)  # what gcsfs would retry lands by then (its back-off: 1 s, then 2 s)
  finally:
    proxy.close()
  assert 1.0 <= ended < 2.0, ended
  assert not (bucket_dir / "late.txt").exists()
  assert not [r for _, r in proxy.requests if r.startswith(b"POST")], proxy.requests


def _state():
  return {"w": jnp.arange(8.0)}


def test_a_save_in_flight_when_the_lease_runs_out_never_commits(bucket_dir, gcs_faults):
  directory = bucket_dir / "checkpoints"
  with _losing_lease(bucket_dir, gcs_faults) as (lock, cut):
    checkpointer = checkpointing.Checkpointer(directory, max_to_keep=2, fence=lock.fence)
    checkpointer.save(1, _state(), {"step": 1})
    checkpointer.save(2, _state(), {"step": 2})  # waits for step 1's commit
    wait_for_lost = cut() + _LEASE + 0.2
    # Step 2's commit is refused if it is still pending; step 3 starts with the lease gone.
    time.sleep(max(0.0, wait_for_lost - time.monotonic()))
    with pytest.raises(WorkdirLockLost, match="This run lost the lock"):
      checkpointer.save(3, _state(), {"step": 3})
    checkpointer.close()  # returns at once: nothing more is written
  committed = sorted(int(step.name) for step in directory.iterdir()
                     if (step / "commit_success.txt").exists())
  assert committed in ([1], [1, 2]), committed
  assert 3 not in committed


def test_the_clean_up_deletes_only_steps_this_run_knows(tmp_path):
  directory = tmp_path / "checkpoints"
  mine = checkpointing.Checkpointer(directory, max_to_keep=2)
  mine.save(10, _state(), {"step": 10})
  mine.check_for_errors()
  # Another run writes step 5 (older than any of this run's) into the same directory.
  rival = checkpointing.Checkpointer(directory, max_to_keep=2)
  rival.save(5, _state(), {"step": 5})
  rival.close()
  for step in (20, 30, 40):
    mine.save(step, _state(), {"step": step})
  mine.close()
  assert sorted(int(p.name) for p in directory.iterdir()) == [5, 30, 40]


def test_compilation_cache_writes_stop_with_the_lease(bucket_dir, gcs_faults, tmp_path):
  cache = tmp_path / "cache"
  with (_losing_lease(bucket_dir, gcs_faults) as (lock, cut),
        compilation_cache.persistent_compilation_cache(os.fspath(cache), bucket_dir, lock.fence)):
    jax.jit(lambda x: x * 3 + 1)(jnp.arange(5)).block_until_ready()
    entries = set(os.listdir(cache))
    assert entries
    time.sleep(max(0.0, cut() + _LEASE + 0.2 - time.monotonic()))
    # A new program compiles and runs; its cache entry is not written.
    assert jax.jit(lambda x: x * 5 - 2)(jnp.arange(5)).tolist() == [-2, 3, 8, 13, 18]
    assert set(os.listdir(cache)) == entries


def _writes_after(proxy: StoreProxy, since: float) -> list[str]:
  """The requests other than reads that ``proxy`` forwarded after ``since``, URL-decoded."""
  return [urllib.parse.unquote(bytes(request).decode(errors="replace"))
          for at, request in proxy.requests if at > since and not request.startswith(b"GET ")]


def _writes_since(proxy: StoreProxy, since: float, prefix: str) -> set[str]:
  """The objects under ``prefix`` named by the writes ``proxy`` forwarded after ``since``."""
  return {name for text in _writes_after(proxy, since)
          for name in re.findall(rf"{re.escape(prefix)}/[\w./-]+", text)}


def _committed_steps(workdir: epath.Path) -> list[int]:
  """The committed checkpoint steps, listed anew (other processes write them)."""
  fs, key = store.filesystem(workdir / "checkpoints")
  fs.invalidate_cache()
  return sorted(int(name.rsplit("/", 2)[-2]) for name in fs.glob(f"{key}/*/commit_success.txt"))


def _holder_pid(workdir: epath.Path) -> int | None:
  current = lock_object.GcsObject(workdir / ".lock").read()
  return None if current is None else json.loads(current.content).get("pid")


def _wait_for(condition, process, timeout: float) -> None:
  """Polls ``condition()`` every 0.3 s (the emulator serves one request at a time) until true;
  fails with the process's output if it exits first or time runs out."""
  deadline = time.monotonic() + timeout
  while not condition():
    if process.poll() is not None or time.monotonic() > deadline:
      process.kill()
      raise AssertionError(f"condition not reached (exit {process.poll()}):\n"
                           f"{process.communicate()[0][-3000:]}")
    time.sleep(0.3)


def test_a_run_cut_off_the_store_writes_nothing_once_another_took_its_workdir_over(bucket_dir):
  # Both runs are the runner; the old one reaches the store only through the partition. It is
  # cut off after its first checkpoint, the new one takes the workdir over (4 s later, the
  # stale time) and saves; then the old one is reconnected and tries to write again.
  emulator = os.environ["STORAGE_EMULATOR_HOST"]
  partition = StoreProxy(emulator)
  lock_timings = {workdir_lock.HEARTBEAT_VARIABLE: "1", workdir_lock.STALE_VARIABLE: "4",
                  store.RETRY_SECONDS_VARIABLE: "20"}
  config = tiny_config(num_train_steps=60, checkpoint_every_steps=10, log_every_steps=5,
                       eval_every_epochs=100, max_to_keep=2)
  workdir, prefix = os.fspath(bucket_dir), bucket_dir.name
  started = time.monotonic()
  old = start_trainer(workdir, config, env={**lock_timings, "STORAGE_EMULATOR_HOST": partition.url,
                                            "TENSORSTORE_GCS_HTTP_URL": partition.url})
  new = None
  try:
    _wait_for(lambda: _committed_steps(bucket_dir), old, timeout=300)  # start-up: compilation
    partition.cut(hold=True)
    cut_at = time.monotonic()
    cut_off_with = _committed_steps(bucket_dir)
    new = start_trainer(workdir, config, env=lock_timings)
    _wait_for(lambda: _holder_pid(bucket_dir) == new.pid, new, timeout=60)
    took_over = time.monotonic()
    _wait_for(lambda: max(_committed_steps(bucket_dir)) > max(cut_off_with) + 10, new, timeout=60)
    partition.heal()
    healed = time.monotonic()
    old_code, old_output = finish(old, timeout=60)
    new_code, new_output = finish(new, timeout=90)
  finally:
    for process in (old, new):
      if process is not None:
        process.kill()
    partition.close()
  print(f"cut off at {cut_at - started:.0f} s with checkpoints {cut_off_with}, taken over at "
        f"{took_over - started:.0f} s, healed at {healed - started:.0f} s, ended at "
        f"{time.monotonic() - started:.0f} s; the old run's writes forwarded after the takeover: "
        f"{sorted(_writes_since(partition, took_over, prefix))}")
  assert old_code == 1 and "Traceback" not in old_output, old_output
  errors = [line for line in old_output.splitlines() if line.startswith("experiments.train:")]
  assert len(errors) == 1 and re.fullmatch(
      rf"experiments.train: error: This run lost the lock of the workdir {workdir}: its "
      r"heartbeat has not reached the store for \d+ s.*, so another run may take it over\. It "
      "stopped before its next checkpoint and writes nothing more there; run it again to "
      "resume.", errors[0]), old_output[-2000:]
  assert new_code == 0, new_output[-3000:]
  # After the takeover the old run wrote nothing but its lock (its release, refused: the
  # object holds another generation), and the new run ends with its own last checkpoints.
  late = [text.split("\r\n", 1)[0][:200] for text in _writes_after(partition, took_over)]
  assert _writes_since(partition, took_over, prefix) <= {f"{prefix}/.lock"}, late
  assert _committed_steps(bucket_dir) == [50, 60]
  summary = json.loads((bucket_dir / "summary.json").read_text())
  assert summary["status"] == "completed" and summary["train_steps"] == 60
