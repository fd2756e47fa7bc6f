"""``cfl_jax.store.agreement`` in two real ``jax.distributed`` processes on the CPU: a failure on
either one is raised on both, as itself when the phase passes its type on, else as ``HostFailed``
naming the process that failed; one in a phase with collectives of its own stops both; processes
that end at once end in order."""

import os
import re
import subprocess
import sys
import textwrap

import pytest

from training_helpers import REPO, free_port

# Each process runs three phases; in each, the process given fails with the error given.
_SCRIPT = textwrap.dedent("""
    import sys
    import jax
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                               process_id=int(sys.argv[2]), initialization_timeout=60)
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
        print(f"{type(raised).__name__}: {raised}", flush=True)
""")


def _two_processes(script: str, *args: str, stderr=subprocess.STDOUT
                   ) -> tuple[list[int | None], list[str]]:
  """Runs ``script`` as processes 0 and 1 of one ``jax.distributed`` job (argv: the coordinator's
  address, the process id, then ``args``) to the end; their exit codes and outputs."""
  address = f"127.0.0.1:{free_port()}"
  env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
  processes = [subprocess.Popen([sys.executable, "-c", script, address, str(i), *args], env=env,
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
               for i in range(2)]
  try:
    outputs = [process.communicate(timeout=120)[0] for process in processes]
  finally:
    for process in processes:
      process.kill()
  return [process.returncode for process in processes], outputs


def test_a_failure_on_either_process_is_raised_on_both():
  codes, outputs = _two_processes(_SCRIPT, stderr=subprocess.DEVNULL)
  assert codes == [0, 0]
  # Gloo writes its own notes to the same stdout, at times around or in the middle of one of
  # ours: ours are picked out by their form (an error's name, then its message up to the line's
  # end or Gloo's next "[").
  outputs = [re.findall(r"[A-Za-z]+(?:Unavailable|Failed|Error): [^\n\[]*", output)
             for output in outputs]
  expected = ["StoreUnavailable: The store kept failing (0).",
              "StoreUnavailable: The store kept failing (1)."]
  assert outputs[0] == expected + [
      "HostFailed: Process 1 of this run failed while writing the run files (PermissionError: "
      "forbidden: denied); every process stopped."]  # the cause named first (errors.reason)
  assert outputs[1] == expected + ["PermissionError: denied"]


# The given process fails alone in a phase while the other waits in a collective of the phase's
# own (as in orbax's barriers); the other's main thread never returns from it.
_STOP_SCRIPT = textwrap.dedent("""
    import sys
    import jax
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                               process_id=int(sys.argv[2]), initialization_timeout=60)
    from jax.experimental import multihost_utils
    from cfl_jax.store import agreement

    failing = int(sys.argv[3])
    with agreement.watching_for_stops(lambda message: print(f"stopped: {message}")):
      with agreement.stop_all_on(OSError):
        if jax.process_index() == failing:
          raise OSError(f"disk full ({failing})")
        multihost_utils.sync_global_devices("the phase's own barrier")
    print("not stopped")
""")


@pytest.mark.parametrize("failing", [0, 1])
def test_a_failure_amid_collectives_of_the_phase_stops_both_with_its_message(failing):
  codes, outputs = _two_processes(_STOP_SCRIPT, str(failing))
  assert codes == [1, 1], outputs
  for output in outputs:  # the message is the last line; nothing after the stop shows
    assert output.strip().splitlines()[-1] == f"stopped: disk full ({failing})", output
    assert "not stopped" not in output and "Traceback" not in output, output


# Both processes get the same error and end at once; process 1 gets there 2 s later (as when it
# still waits for a thread to finish). Ended with a plain os._exit, process 0 would take the
# coordination service with it and JAX would abort process 1 (SIGABRT) while it is still busy.
_LEAVE_SCRIPT = textwrap.dedent("""
    import sys
    import time
    import jax
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                               process_id=int(sys.argv[2]), initialization_timeout=60)
    from cfl_jax import store
    from cfl_jax.store import agreement

    try:
      with agreement.together("writing the run files"):
        raise store.StoreUnavailable("The store kept failing.")
    except store.StoreUnavailable as error:
      if jax.process_index() == 1:
        time.sleep(2)
      agreement.leave(1, lambda: print(f"ending: {error}"))
""")


def test_processes_that_end_at_once_end_with_their_status_process_0_last():
  codes, outputs = _two_processes(_LEAVE_SCRIPT)
  assert codes == [1, 1], outputs
  for output in outputs:
    assert output.strip().splitlines()[-1] == "ending: The store kept failing.", output
