"""A store that fails for one process of a multi-host run stops every process alike.

Two ``python -m experiments.train`` processes of one ``jax.distributed`` job share a bucket workdir
on the GCS emulator, each through its own loopback proxy (gcsfs and tensorstore alike); the test
cuts the proxy of one process only. Both must stop with the same one-line error and exit status 1
within the retry budget plus the margin the deployment guide states, rather than one of them
waiting in a collective for the other.
"""

import contextlib
import os
import socket
import threading
import time
import uuid

from etils import epath
import pytest

from cfl_jax import store
from training_helpers import finish, free_port, start_trainer, tiny_config

pytestmark = pytest.mark.usefixtures("runner_subprocesses_share_the_module_cache")

_BUDGET = 2.0  # seconds: the retry budget of both processes
# The margin docs/guides/deployment.md states: the store request under way when the budget ends
# runs on through the client's own retries (gcsfs retries a refused or dropped request for 33-35 s,
# measured on this machine), and so does process 0's release of the workdir lock on its way out;
# the processes' agreement and exit take under a second.
_MARGIN = 80.0
_CONFIG = tiny_config(num_train_steps=20, checkpoint_every_steps=5, log_every_steps=5,
                      eval_every_epochs=0)


class _Proxy:
  """A TCP forwarder on loopback to the emulator. Once :meth:`cut`, it drops its connections and
  closes every new one at once, noting when its process first reached the dead store."""

  def __init__(self, upstream: str):
    self._upstream = ("127.0.0.1", int(upstream.rsplit(":", 1)[1]))
    self._listener = socket.create_server(("127.0.0.1", 0))
    self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
    self._open: list[socket.socket] = []
    self._cut = False
    self.first_refused: float | None = None  # time.time() of the first connection refused
    threading.Thread(target=self._accept, daemon=True).start()

  def _accept(self) -> None:
    while True:
      try:
        client, _ = self._listener.accept()
      except OSError:
        return  # closed
      if self._cut:
        self.first_refused = self.first_refused or time.time()
        client.close()
        continue
      upstream = socket.create_connection(self._upstream)
      self._open += [client, upstream]
      for source, sink in ((client, upstream), (upstream, client)):
        threading.Thread(target=_pump, args=(source, sink), daemon=True).start()

  def cut(self) -> None:
    self._cut = True
    for connection in self._open:
      with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
      connection.close()

  def close(self) -> None:
    self.cut()
    with contextlib.suppress(OSError):
      self._listener.shutdown(socket.SHUT_RDWR)
    self._listener.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
  with contextlib.suppress(OSError):
    while data := source.recv(1 << 16):
      sink.sendall(data)
  with contextlib.suppress(OSError):
    sink.shutdown(socket.SHUT_WR)


@pytest.fixture
def proxies(gcs_bucket):
  """One proxy per process, in process order."""
  del gcs_bucket  # started, and its URL in the environment
  made = [_Proxy(os.environ["STORAGE_EMULATOR_HOST"]) for _ in range(2)]
  yield made
  for proxy in made:
    proxy.close()


def _two_processes(workdir: epath.Path, proxies: list[_Proxy]) -> list:
  """The runner as processes 0 and 1 of one ``jax.distributed`` job, 4 CPU devices each, each
  reaching the store through its own proxy."""
  flags = ["--distributed", f"--coordinator_address=127.0.0.1:{free_port()}",
           "--num_processes=2", "--initialization_timeout=60"]
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         store.RETRY_SECONDS_VARIABLE: str(_BUDGET), "CFL_JAX_LOCK_HEARTBEAT_SECONDS": "3",
         "CFL_JAX_LOCK_STALE_SECONDS": "30"}
  return [start_trainer(os.fspath(workdir), _CONFIG, *flags, f"--process_id={i}",
                        env={**env, "STORAGE_EMULATOR_HOST": proxy.url,
                             "TENSORSTORE_GCS_HTTP_URL": proxy.url})
          for i, proxy in enumerate(proxies)]


def _stopped_alike(processes, proxy: _Proxy) -> str:
  """Waits for both processes; asserts they stopped with exit status 1 and the same one-line
  error within the budget plus the margin after ``proxy``'s process first found the store
  gone; returns that line."""
  try:
    results = [finish(process, timeout=_BUDGET + _MARGIN + 60) for process in processes]
  finally:
    for process in processes:
      process.kill()
  assert proxy.first_refused is not None
  elapsed = time.time() - proxy.first_refused
  lines = []
  for code, output in results:
    assert code == 1 and "Traceback" not in output, output[-3000:]
    lines.append(output.strip().splitlines()[-1])
  print(f"both stopped {elapsed:.1f} s after the store failed:", lines[0])
  assert lines[0] == lines[1] and lines[0].startswith("experiments.train: error: "), lines
  assert elapsed < _BUDGET + _MARGIN
  return lines[0]


def test_a_store_failing_for_process_1_at_the_start_stops_both(gcs_bucket, proxies):
  workdir = epath.Path(f"{gcs_bucket}/{uuid.uuid4().hex[:8]}")
  proxies[1].cut()  # process 1 first reaches the store when it lists the checkpoints
  line = _stopped_alike(_two_processes(workdir, proxies), proxies[1])
  assert f"The store kept failing while listing the checkpoints in {workdir}/" in line, line
