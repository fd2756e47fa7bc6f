"""The workdir lock on a GCS bucket, against a real GCS API server that misbehaves as buckets do.

Every lock write is conditioned on the generation read, so the store decides races; these tests
race lock holders, lose the store's answers, fail the heartbeat, skew host clocks and kill
trainers. Timings are short (heartbeat 1 s, stale after 5 s) except where the defaults are the
point.
"""

from collections.abc import Iterator
import contextlib
import datetime
import http.server
import json
import logging
import os
import signal
import threading
import time
import uuid

from etils import epath
from etils.epath import backend as epath_backend
import fsspec
import gcsfs
from google.oauth2 import credentials as oauth2_credentials
import pytest

from cfl_jax import store
from cfl_jax.store import lock_object, workdir_lock
from cfl_jax.training import ConfigError, WorkdirLocked, WorkdirLockLost, reporting
from cfl_jax.training import train_and_evaluate
from training_helpers import finish, free_port, start_trainer, tiny_config, wait_for

_SHORT = {"heartbeat_seconds": 1.0, "stale_seconds": 5.0}
_SHORT_ENV = {workdir_lock.HEARTBEAT_VARIABLE: "1", workdir_lock.STALE_VARIABLE: "5"}


@pytest.fixture
def bucket_dir(gcs_bucket):
  """A fresh ``gs://`` prefix for one test."""
  return epath.Path(f"{gcs_bucket}/{uuid.uuid4().hex[:8]}")


def _lock_object(workdir) -> lock_object.GcsObject:
  return lock_object.GcsObject(epath.Path(workdir) / ".lock")


def _record(workdir) -> dict | None:
  """The lock record now (read uncached: gcsfs caches listings and sizes)."""
  current = _lock_object(workdir).read()
  return None if current is None else json.loads(current.content)


def _lock_requests(workdir, method: str = "POST") -> str:
  """The fault-plan pattern of ``method`` requests on ``workdir``'s lock object."""
  return rf"^{method} \S+ {epath.Path(workdir).name}/\.lock$"


def _dead_lock(workdir, **fields) -> None:
  """The lock of a run that died without removing it."""
  record = {"token": "dead", "pid": 4321, "host": "preempted-vm",
            "holder": "pid 4321 on preempted-vm", **fields}
  assert _lock_object(workdir).write(json.dumps(record).encode(), "0") is not None


def _enter(lock: workdir_lock.WorkdirLock) -> tuple[float, Exception | None]:
  """Seconds ``lock`` took to be taken or refused, and the refusal."""
  started = time.monotonic()
  try:
    lock.__enter__()
  except WorkdirLocked as error:
    return time.monotonic() - started, error
  return time.monotonic() - started, None


def _wait_until(condition, timeout: float) -> None:
  deadline = time.monotonic() + timeout
  while not condition():
    assert time.monotonic() < deadline, "condition not reached in time"
    time.sleep(0.05)


def _held_through(lock: workdir_lock.WorkdirLock, seconds: float) -> None:
  """Checks ``lock`` every 0.2 s for ``seconds`` (WorkdirLockLost fails the test)."""
  deadline = time.monotonic() + seconds
  while time.monotonic() < deadline:
    lock.check()
    time.sleep(0.2)


# Taking and refusing.

def test_a_live_lock_is_refused_within_a_heartbeat_and_released_at_exit(bucket_dir):
  with workdir_lock.WorkdirLock(bucket_dir, **_SHORT):
    record = _record(bucket_dir)
    assert record["pid"] == os.getpid()
    seconds, refusal = _enter(workdir_lock.WorkdirLock(bucket_dir, **_SHORT))
    assert str(refusal) == (f"The workdir {bucket_dir} is in use by another run "
                            f"({record['holder']}); wait for it to finish, or give this run its "
                            "own --workdir.")
    # Its next heartbeat (1 s), seen at the next look (every 1/3 s); a dead lock would be taken
    # over after 5 s instead.
    assert seconds < _SHORT["stale_seconds"]
  assert _record(bucket_dir) is None
  with workdir_lock.WorkdirLock(bucket_dir, **_SHORT):  # free again at once
    pass


def test_a_store_that_fails_at_the_start_gives_one_clear_refusal(bucket_dir, gcs_faults):
  gcs_faults.set(rate=1.0, statuses=[401], after_effect=0.0,
                 match=_lock_requests(bucket_dir, "GET"))
  _, refusal = _enter(workdir_lock.WorkdirLock(bucket_dir, **_SHORT))
  assert str(refusal) == (f"Could not lock the workdir {bucket_dir}: HttpError: injected fault, "
                          "401")


def test_the_lock_object_is_created_only_if_absent(bucket_dir):
  filesystem, key = fsspec.core.url_to_fs(os.fspath(bucket_dir / ".lock"))
  filesystem.pipe_file(key, b"{}", mode="create")
  with pytest.raises(FileExistsError):  # the store enforces it (a generation precondition)
    filesystem.pipe_file(key, b"{}", mode="create")


def test_racing_takeovers_of_a_stale_lock_leave_exactly_one_holder(bucket_dir, caplog):
  _dead_lock(bucket_dir)
  time.sleep(_SHORT["stale_seconds"] + 1)  # stale by the store's clock: taken over at first sight
  locks = [workdir_lock.WorkdirLock(bucket_dir, **_SHORT) for _ in range(4)]
  start = threading.Barrier(len(locks))
  outcomes: list = [None] * len(locks)

  def take(index: int) -> None:
    start.wait()
    outcomes[index] = _enter(locks[index])

  threads = [threading.Thread(target=take, args=(i,)) for i in range(len(locks))]
  with caplog.at_level(logging.WARNING):
    for thread in threads:
      thread.start()
    for thread in threads:
      thread.join()
  holders = [lock for lock, (_, refusal) in zip(locks, outcomes) if refusal is None]
  refusals = [str(refusal) for _, refusal in outcomes if refusal is not None]
  assert len(holders) == 1 and len(refusals) == 3, refusals
  assert all("is in use by another run (pid " in refusal for refusal in refusals)
  assert all(seconds < _SHORT["stale_seconds"] for seconds, _ in outcomes)  # at first sight
  assert "Taking over the stale lock" in caplog.text and "pid 4321 on preempted-vm" in caplog.text
  holders[0].check()
  holders[0].__exit__(None, None, None)
  assert _record(bucket_dir) is None


def test_a_lost_answer_to_the_create_is_recognised_as_this_runs_own(bucket_dir, gcs_faults):
  gcs_faults.set(lose=[{"match": _lock_requests(bucket_dir), "count": 1}])
  with workdir_lock.WorkdirLock(bucket_dir, **_SHORT) as lock:
    assert gcs_faults.counts()["answers_lost"] == 1
    assert _record(bucket_dir)["pid"] == os.getpid()
    time.sleep(2)  # heartbeats go on from the generation it found
    lock.check()
  assert _record(bucket_dir) is None


def test_a_lost_heartbeat_answer_is_recognised_as_this_runs_own(bucket_dir, gcs_faults, caplog):
  with caplog.at_level(logging.WARNING):
    with workdir_lock.WorkdirLock(bucket_dir, **_SHORT) as lock:
      gcs_faults.set(lose=[{"match": _lock_requests(bucket_dir), "count": 1}])
      _wait_until(lambda: gcs_faults.counts()["answers_lost"] == 1, timeout=5)
      written = _lock_object(bucket_dir).read().generation
      _wait_until(lambda: _lock_object(bucket_dir).read().generation != written,
                         timeout=10)  # its heartbeat goes on from the generation it found
      lock.check()
  assert "taken over" not in caplog.text
  assert _record(bucket_dir) is None  # deleted at the generation it adopted


def test_a_lock_whose_holder_is_gone_is_taken_over_after_the_stale_time(bucket_dir, caplog):
  _dead_lock(bucket_dir)
  with caplog.at_level(logging.WARNING):
    seconds, refusal = _enter(lock := workdir_lock.WorkdirLock(bucket_dir, **_SHORT))
  assert refusal is None and _record(bucket_dir)["pid"] == os.getpid()
  assert _SHORT["stale_seconds"] - 1 < seconds < _SHORT["stale_seconds"] + 2
  assert "Taking over the stale lock" in caplog.text
  lock.__exit__(None, None, None)


@pytest.mark.parametrize("skew", [600, -600])
def test_host_clocks_decide_nothing(bucket_dir, monkeypatch, skew):
  real_time = time.time
  monkeypatch.setattr(time, "time", lambda: real_time() + skew)
  # A live lock is refused however far this host's clock is off from the holder's ...
  with workdir_lock.WorkdirLock(bucket_dir, **_SHORT):
    monkeypatch.setattr(time, "time", lambda: real_time() - skew)
    _, refusal = _enter(workdir_lock.WorkdirLock(bucket_dir, **_SHORT))
    assert refusal is not None
  # ... and a dead one, even one whose old-style heartbeat lies in this host's future, is taken
  # over after the stale time.
  _dead_lock(bucket_dir, heartbeat=real_time() + 2 * abs(skew))
  seconds, refusal = _enter(lock := workdir_lock.WorkdirLock(bucket_dir, **_SHORT))
  assert refusal is None and seconds < _SHORT["stale_seconds"] + 2
  lock.__exit__(None, None, None)


# The heartbeat under store and authentication failures.

def test_the_heartbeat_outlives_store_errors_while_the_window_allows(bucket_dir, gcs_faults,
                                                                      caplog):
  timings = {"heartbeat_seconds": 1.0, "stale_seconds": 10.0}  # lost after 9 s without a write
  with caplog.at_level(logging.WARNING), workdir_lock.WorkdirLock(bucket_dir, **timings) as lock:
    # Errors gcsfs raises at once (an HttpError, not an OSError): logged, retried.
    gcs_faults.set(rate=1.0, statuses=[401], after_effect=0.0, match=_lock_requests(bucket_dir))
    _held_through(lock, 3)
    assert "Could not refresh the lock" in caplog.text and "HttpError" in caplog.text
    # 503s that gcsfs retries itself, for 2 s.
    gcs_faults.set(rate=1.0, statuses=[503], after_effect=0.0, match=_lock_requests(bucket_dir))
    _held_through(lock, 2)
    refused = gcs_faults.counts()["refused"]
    gcs_faults.clear()
    written = _lock_object(bucket_dir).read().generation
    _wait_until(lambda: _lock_object(bucket_dir).read().generation != written, timeout=20)
    assert refused > 0
    _held_through(lock, 1)
    # A failure that outlasts the window stops the run at its next check, naming the last error
    # (gcsfs gives up on a request within seconds: cfl_jax.store.clients).
    gcs_faults.set(rate=1.0, statuses=[503], after_effect=0.0, match=_lock_requests(bucket_dir))
    started = time.monotonic()
    with pytest.raises(WorkdirLockLost, match=(
        rf"This run lost the lock of the workdir {bucket_dir}: its heartbeat has not reached "
        r"the store for \d+ s( \(last error: [^)]+\))?, so another run may take it over\. It "
        "stopped before its next "
        "checkpoint")):
      _held_through(lock, 15)
    assert time.monotonic() - started < 11
    gcs_faults.clear()
  assert _record(bucket_dir) is None  # nobody took it over: removed at exit


class _TokenEndpoint(http.server.BaseHTTPRequestHandler):
  """An OAuth 2 token endpoint that refuses refresh tokens while ``refusing`` is set."""

  refusing = threading.Event()
  refused = 0

  def do_POST(self):  # pylint: disable=invalid-name
    self.rfile.read(int(self.headers["Content-Length"]))
    if self.refusing.is_set():
      type(self).refused += 1
      status, answer = 400, {"error": "invalid_grant", "error_description": "Token revoked."}
    else:
      status, answer = 200, {"access_token": "fresh", "expires_in": 3600}
    content = json.dumps(answer).encode()
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(content)))
    self.end_headers()
    self.wfile.write(content)

  def log_message(self, *args):  # pylint: disable=arguments-differ
    del args


@contextlib.contextmanager
def _token_endpoint() -> Iterator[str]:
  server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _TokenEndpoint)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{server.server_address[1]}/token"
  finally:
    server.shutdown()


@pytest.fixture
def fresh_gcs_client():
  """A GCS client built anew from ``fsspec.config.conf`` for this test (etils.epath, and so
  the lock, keep one cached client per process), and discarded after it."""
  def clear():
    epath_backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
    gcsfs.GCSFileSystem.clear_instance_cache()
  clear()
  yield
  clear()


def test_the_heartbeat_outlives_refused_credential_refreshes(bucket_dir, monkeypatch,
                                                             fresh_gcs_client):
  del fresh_gcs_client  # used for its effect
  with _token_endpoint() as token_uri:
    credentials = oauth2_credentials.Credentials(
        "first", refresh_token="refresh", client_id="id", client_secret="secret",
        token_uri=token_uri, expiry=datetime.datetime.utcnow() + datetime.timedelta(hours=1))
    monkeypatch.setitem(fsspec.config.conf, "gs", {"token": credentials})
    timings = {"heartbeat_seconds": 1.0, "stale_seconds": 10.0}
    with workdir_lock.WorkdirLock(bucket_dir, **timings) as lock:
      # The access token expires and the token endpoint refuses to refresh it (google-auth
      # RefreshError, retried by gcsfs) for 2 s: the run goes on.
      _TokenEndpoint.refusing.set()
      credentials.expiry = datetime.datetime.utcnow() - datetime.timedelta(seconds=1)
      _held_through(lock, 2)
      _TokenEndpoint.refusing.clear()
      _held_through(lock, 4)
      assert _TokenEndpoint.refused > 0 and credentials.token == "fresh"
      # Refused for good: the run stops at its next check once the window has passed.
      _TokenEndpoint.refusing.set()
      credentials.expiry = datetime.datetime.utcnow() - datetime.timedelta(seconds=1)
      with pytest.raises(WorkdirLockLost, match="heartbeat has not reached the store"):
        _held_through(lock, 15)
      _TokenEndpoint.refusing.clear()


# Trainers: hard kills, takeovers, several processes.

def _holder_pid(workdir) -> int | None:
  return (_record(workdir) or {}).get("pid")


def _newest_checkpoint(workdir) -> int:
  """The newest checkpoint's step (0: none), listed afresh."""
  filesystem, key = store.filesystem(os.fspath(epath.Path(workdir) / "checkpoints"))
  filesystem.invalidate_cache()
  names = [os.path.basename(path) for path in filesystem.ls(key, detail=False)
           ] if filesystem.exists(key) else []
  return max((int(name) for name in names if name.isdigit()), default=0)


# A relaunch's own start (imports, the lock's first read, restoring the checkpoint, its first
# steps) after the stale time: the guide's "about 60 s after the last heartbeat" at the defaults
# is stale + this, at most 150 s (checked below; the relaunches load the holder's compiled
# programs, so the lock's timing is measured, not the compiler's).
_RELAUNCH_START_SECONDS = 90


def test_the_default_lock_timings_let_a_relaunch_train_within_150_s():
  assert workdir_lock.STALE_SECONDS + _RELAUNCH_START_SECONDS <= 150


def test_after_a_hard_kill_exactly_one_of_two_relaunches_trains_after_the_stale_time(
    bucket_dir, compilation_cache):
  """At scaled lock timings (stale 5 s): one of two relaunches trains within the stale time plus
  a relaunch's start, the other is refused with the holder's name."""
  workdir = os.fspath(bucket_dir)
  config = tiny_config(num_train_steps=100_000, checkpoint_every_steps=50, log_every_steps=50)
  env = {**compilation_cache, **_SHORT_ENV}
  bound = _SHORT["stale_seconds"] + _RELAUNCH_START_SECONDS
  holder = start_trainer(workdir, config, env=env)
  wait_for(lambda: _newest_checkpoint(workdir) > 0, holder, timeout=180)
  holder.kill()  # SIGKILL: the lock stays behind
  killed = time.monotonic()
  holder.wait()
  stopped = _newest_checkpoint(workdir)
  relaunches = [start_trainer(workdir, config, env=env) for _ in range(2)]
  try:
    while not (_holder_pid(workdir) in [p.pid for p in relaunches]
               and _newest_checkpoint(workdir) > stopped):
      if time.monotonic() - killed > bound:
        outputs = [finish(p, timeout=0.1)[1] if p.poll() is not None else p.kill() or
                   p.communicate()[0] for p in relaunches]
        raise AssertionError(f"no relaunch trained within {bound} s of the kill:\n"
                             + "\n-----\n".join(o[-3000:] for o in outputs))
      assert all(p.poll() in (None, 1) for p in relaunches)
      time.sleep(0.2)
    trained_after = time.monotonic() - killed
    winner = next(p for p in relaunches if p.pid == _holder_pid(workdir))
    loser = next(p for p in relaunches if p is not winner)
    code, output = finish(loser, timeout=60)
    assert code == 1 and "Traceback" not in output, output
    assert (f"The workdir {workdir} is in use by another run (pid {winner.pid} on "
            in output.splitlines()[-1])
    winner.send_signal(signal.SIGTERM)
    code, output = finish(winner, timeout=60)
  finally:
    for process in relaunches:
      process.kill()
  assert code == 0 and "Preempted after step" in output, output
  assert trained_after < bound
  print(f"a relaunch trained {trained_after:.1f} s after the kill (stale 5 s)")


def test_a_trainer_rides_out_heartbeat_failures_and_stops_once_its_lock_is_taken_over(
    bucket_dir, gcs_faults):
  workdir = os.fspath(bucket_dir)
  config = tiny_config(num_train_steps=100_000, checkpoint_every_steps=20, log_every_steps=20)
  process = start_trainer(workdir, config, env=_SHORT_ENV)
  try:
    wait_for(lambda: _newest_checkpoint(workdir) > 0, process, timeout=180)
    # Its heartbeat fails for 2 s (HttpError at once), within the 4 s it may miss: it goes on.
    gcs_faults.set(rate=1.0, statuses=[401], after_effect=0.0, match=_lock_requests(workdir))
    time.sleep(2)
    refused = gcs_faults.counts()["refused"]
    gcs_faults.clear()
    time.sleep(2)
    assert process.poll() is None
    # Another run takes its lock over (at the generation it read, racing the heartbeat).
    rival = {"token": "rival", "pid": 999, "host": "rival-vm", "holder": "pid 999 on rival-vm"}
    _wait_until(lambda: _lock_object(workdir).write(
        json.dumps(rival).encode(), _lock_object(workdir).read().generation), timeout=10)
    code, output = finish(process, timeout=60)
  finally:
    process.kill()
  assert refused > 0 and "Could not refresh the lock" in output
  assert code == 1 and "Traceback" not in output, output
  assert output.splitlines()[-1] == (
      f"experiments.train: error: This run lost the lock of the workdir {workdir}: another run "
      "took it over (pid 999 on rival-vm). It stopped before its next checkpoint and writes "
      "nothing more there; run it again to resume.")
  assert _record(workdir) == rival  # left alone
  # Nothing written after the check that found the lock lost: no summary, and metrics.jsonl ends
  # at a checkpoint step with every record once. That step is the newest checkpoint's, or the
  # next one's when the takeover fell between that step's run-file sync (admitted: the heartbeat
  # had not seen the rival yet) and its checkpoint, which the fence then refused (seen once in
  # about 10 runs; a relaunch drops those records as it resumes from the newest checkpoint).
  newest = _newest_checkpoint(workdir)
  records = reporting.read_metrics(bucket_dir / "metrics.jsonl")
  last = max(r["step"] for r in records)
  assert last in (newest, newest + config["checkpoint_every_steps"]), (last, newest)
  assert [r["step"] for r in records if r["split"] == "train"] == list(range(20, last + 1, 20))
  assert not (bucket_dir / "summary.json").exists()


def _two_processes(workdir: str, config: dict) -> list[tuple[int, str]]:
  """The runner as processes 0 and 1 of one ``jax.distributed`` job, to the end."""
  flags = ["--distributed", f"--coordinator_address=127.0.0.1:{free_port()}",
           "--num_processes=2", "--initialization_timeout=60"]
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", **_SHORT_ENV}
  processes = [start_trainer(workdir, config, *flags, f"--process_id={i}", env=env)
               for i in range(2)]
  try:
    return [finish(process, timeout=180) for process in processes]
  finally:
    for process in processes:  # a missing peer would leave the other one waiting
      process.kill()


def test_every_process_of_a_multi_host_run_waits_for_process_0_to_take_a_dead_lock(bucket_dir):
  # Process 1 hears process 0's word at every look at the lock, so it never waits long in one
  # collective (on CPU, gloo's collectives time out: checked with a 45 s stale time).
  _dead_lock(bucket_dir)
  results = _two_processes(os.fspath(bucket_dir), tiny_config(num_train_steps=20))
  for code, output in results:
    assert code == 0, output
  assert "Taking over the stale lock" in results[0][1]
  assert _record(bucket_dir) is None and (bucket_dir / "summary.json").exists()


def test_every_process_of_a_refused_multi_host_run_stops_with_the_same_message(bucket_dir):
  workdir = os.fspath(bucket_dir)
  with workdir_lock.WorkdirLock(bucket_dir, **_SHORT):
    holder = _record(bucket_dir)["holder"]
    results = _two_processes(workdir, tiny_config(num_train_steps=40))
  expected = (f"experiments.train: error: The workdir {workdir} is in use by another run "
              f"({holder}); wait for it to finish, or give this run its own --workdir.")
  for code, output in results:  # (Gloo's notes may come before or after the message's line)
    assert code == 1 and f"{expected}\n" in output and "Traceback" not in output, output
  assert not (bucket_dir / "checkpoints").exists()


@pytest.mark.parametrize("workdir", ["s3://bucket/run", "az://container/run"])
def test_a_workdir_on_another_object_store_is_refused_before_anything_runs(workdir):
  with pytest.raises(ConfigError, match=f"The workdir {workdir} is on an object store other than "
                                        "GCS: use a local .* or a gs:// bucket"):
    train_and_evaluate(tiny_config(), workdir)
