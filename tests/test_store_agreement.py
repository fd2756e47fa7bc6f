"""``cfl_jax.store.agreement`` in two real ``jax.distributed`` processes on the CPU: a failure on
either one is raised on both, as itself when the phase passes its type on, else as ``HostFailed``
naming the process that failed; one in a phase with collectives of its own stops both; processes
that end at once end in order."""

import os
import subprocess
import sys
import textwrap

import pytest

from training_helpers import REPO, free_port

# Each script starts as process sys.argv[2] of the job at sys.argv[1], and reports what it saw
# with report(): to a file of its own (sys.argv[3]), as Gloo writes its notes to the same stdout,
# at times in the middle of a line.
_PROLOGUE = textwrap.dedent("""
    import sys
    import jax
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                               process_id=int(sys.argv[2]), initialization_timeout=60)
    _reports = open(sys.argv[3], "a")

    def report(line):
      print(line, file=_reports, flush=True)
""")

# Each process runs three phases; in each, the process given fails with the error given.
_SCRIPT = textwrap.dedent("""
    from cfl_jax import store
    from cfl_jax.store import agreement

    for process, error in ((0, store.StoreUnavailable("The store kept failing (0).")),
                           (1, store.StoreUnavailable("The store kept failing (1).")),
                           (1, PermissionError("denied"))):
      try:
        with agreement.together("writing the run files"):
          if jax.process_index() == process:
            raise error
      except Exception as raised:  # pylint: disable=broad-except
        report(f"{type(raised).__name__}: {raised}")
""")


def _two_processes(script: str, tmp_path, *args: str
                   ) -> tuple[list[int | None], list[list[str]], list[str]]:
  """Runs ``_PROLOGUE`` + ``script`` as processes 0 and 1 of one ``jax.distributed`` job (argv:
  the coordinator's address, the process id, its reports' file, then ``args``) to the end; their
  exit codes, reports (lines) and outputs (stdout and stderr)."""
  address = f"127.0.0.1:{free_port()}"
  env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
  reports = [tmp_path / f"reports_{i}.txt" for i in range(2)]
  processes = [subprocess.Popen([sys.executable, "-c", _PROLOGUE + script, address, str(i),
                                 str(reports[i]), *args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
               for i in range(2)]
  try:
    outputs = [process.communicate(timeout=120)[0] for process in processes]
  finally:
    for process in processes:
      process.kill()
  lines = [path.read_text().splitlines() if path.exists() else [] for path in reports]
  return [process.returncode for process in processes], lines, outputs


def test_a_failure_on_either_process_is_raised_on_both(tmp_path):
  codes, reports, outputs = _two_processes(_SCRIPT, tmp_path)
  assert codes == [0, 0], outputs
  expected = ["StoreUnavailable: The store kept failing (0).",
              "StoreUnavailable: The store kept failing (1)."]
  assert reports[0] == expected + [
      "HostFailed: Process 1 of this run failed while writing the run files (PermissionError: "
      "forbidden: denied); every process stopped."]  # the cause named first (errors.reason)
  assert reports[1] == expected + ["PermissionError: denied"]


# The given process fails alone in a phase while the other waits in a collective of the phase's
# own (as in orbax's barriers); the other's main thread never returns from it.
_STOP_SCRIPT = textwrap.dedent("""
    from jax.experimental import multihost_utils
    from cfl_jax.store import agreement

    failing = int(sys.argv[4])
    with agreement.watching_for_stops(lambda message: report(f"stopped: {message}")):
      with agreement.stop_all_on(OSError):
        if jax.process_index() == failing:
          raise OSError(f"disk full ({failing})")
        multihost_utils.sync_global_devices("the phase's own barrier")
    report("not stopped")
""")


@pytest.mark.parametrize("failing", [0, 1])
def test_a_failure_amid_collectives_of_the_phase_stops_both_with_its_message(failing, tmp_path):
  codes, reports, outputs = _two_processes(_STOP_SCRIPT, tmp_path, str(failing))
  assert codes == [1, 1], outputs
  # The message is the one report; nothing after the stop shows.
  assert reports == [[f"stopped: disk full ({failing})"]] * 2, outputs
  assert not any("Traceback" in output for output in outputs), outputs


# Both processes get the same error and end at once; process 1 gets there 2 s later (as when it
# still waits for a thread to finish). Ended with a plain os._exit, process 0 would take the
# coordination service with it and JAX would abort process 1 (SIGABRT) while it is still busy.
_LEAVE_SCRIPT = textwrap.dedent("""
    import time
    from cfl_jax import store
    from cfl_jax.store import agreement

    try:
      with agreement.together("writing the run files"):
        raise store.StoreUnavailable("The store kept failing.")
    except store.StoreUnavailable as error:
      if jax.process_index() == 1:
        time.sleep(2)
      agreement.leave(1, lambda: report(f"ending: {error}"))
""")


def test_processes_that_end_at_once_end_with_their_status_process_0_last(tmp_path):
  codes, reports, outputs = _two_processes(_LEAVE_SCRIPT, tmp_path)
  assert codes == [1, 1], outputs
  assert reports == [["ending: The store kept failing."]] * 2, outputs
