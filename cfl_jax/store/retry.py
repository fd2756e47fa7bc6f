"""Store calls run again through transient errors, with back-off, for a bounded time.

:func:`retrying` runs a store call again through transient errors
(:func:`cfl_jax.store.errors.is_transient`) for up to :data:`RETRY_SECONDS` (environment variable
:data:`RETRY_SECONDS_VARIABLE`), then raises :class:`cfl_jax.store.errors.StoreUnavailable`.
"""

from collections.abc import Callable
import os
import time
from typing import TypeVar

from absl import logging

from cfl_jax.store.errors import StoreUnavailable
from cfl_jax.store.errors import is_transient
from cfl_jax.store.errors import reason

T = TypeVar("T")

#: How long one store call is retried (seconds from its first attempt) before the run gives up
#: with StoreUnavailable; an attempt under way when it expires is finished first (gcsfs alone
#: retries one request for about 30 s). Three minutes rides out an outage of a minute or two and
#: still stops a run whose store is gone within minutes. Tests lower it through the environment
#: variable.
RETRY_SECONDS = 180.0
RETRY_SECONDS_VARIABLE = "CFL_JAX_STORE_RETRY_SECONDS"  #: the variable that overrides it
_FIRST_DELAY_SECONDS, _LONGEST_DELAY_SECONDS = 1.0, 30.0

def retry_budget() -> float:
  """Seconds :func:`retrying` keeps trying: :data:`RETRY_SECONDS_VARIABLE` if set, else
  :data:`RETRY_SECONDS`.

  Raises:
    ValueError: naming the variable, when it is not a number of seconds >= 0.
  """
  text = os.environ.get(RETRY_SECONDS_VARIABLE)
  if text is None:
    return RETRY_SECONDS
  try:
    seconds = float(text)
  except ValueError:
    seconds = -1.0
  if not seconds >= 0:
    raise ValueError(f"{RETRY_SECONDS_VARIABLE}={text!r} is not a number of seconds >= 0.")
  return seconds


def retrying(what: str, call: Callable[[], T], *, budget: float | None = None) -> T:
  """``call()``, run again after each transient store error (:func:`is_transient`) with
  exponential back-off (1 s, 2 s, ... up to 30 s) until ``budget`` seconds have passed.

  Args:
    what: what the call does, for the log and the error ("uploading gs://b/run/metrics.jsonl").
    call: the store operation; it must be safe to repeat (a whole upload, a read, a listing).
    budget: seconds; default :func:`retry_budget`.

  Raises:
    StoreUnavailable: when the errors are still transient after ``budget`` seconds.
    Exception: any other error of ``call``, at once.

  Examples:
    >>> retrying('reading a number', lambda: 42)
    42
  """
  budget = retry_budget() if budget is None else budget
  deadline = time.monotonic() + budget
  delay = _FIRST_DELAY_SECONDS
  while True:
    try:
      return call()
    except Exception as error:  # pylint: disable=broad-except (only transient ones are retried)
      if not is_transient(error):
        raise
      left = deadline - time.monotonic()
      if left <= 0:
        raise StoreUnavailable(
            f"The store kept failing while {what} for {budget:.0f} s ({reason(error)}). Nothing "
            "was lost: run again to resume from the newest checkpoint.") from error
      logging.warning("Store error while %s (%s); trying again in %.0f s.", what, reason(error),
                      min(delay, left))
      time.sleep(min(delay, left))
      delay = min(2 * delay, _LONGEST_DELAY_SECONDS)


