"""What a store's error means: an outage to ride out (transient) or an answer to act on.

:func:`is_transient` reads the chain of an error raised by the store clients (gcsfs, aiohttp,
google-auth, requests, TensorStore) and says whether trying again may help.
"""

from collections.abc import Iterator
import functools
import re

# HTTP answers that mean "try again": time-out, too many requests, server errors.
_TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})
# Status codes TensorStore (orbax's array I/O) reports for an unreachable or slow store.
_TRANSIENT_STATUS = re.compile(r"\b(UNAVAILABLE|DEADLINE_EXCEEDED)\b")


class StoreUnavailable(RuntimeError):
  """The store (a bucket) kept failing with transient errors for longer than the retry budget;
  nothing was lost, and running again resumes from the newest checkpoint."""


@functools.cache
def _transient_types() -> tuple[type[BaseException], ...]:
  """Client exceptions that mean the store is unreachable or overloaded (of the clients that are
  installed): connection failures, time-outs, expired credentials."""
  found: list[type[BaseException]] = [ConnectionError, TimeoutError]
  try:
    import aiohttp  # pylint: disable=g-import-not-at-top (gcsfs's HTTP client, optional)
    found.append(aiohttp.ClientError)
  except ImportError:
    pass
  try:
    from google.auth import exceptions as auth  # pylint: disable=g-import-not-at-top
    found += [auth.RefreshError, auth.TransportError]
  except ImportError:
    pass
  try:
    import requests  # pylint: disable=g-import-not-at-top
    found += [requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError]
  except ImportError:
    pass
  return tuple(found)


def error_chain(error: BaseException) -> Iterator[BaseException]:
  """``error`` and the errors it was raised from or while handling, outermost first."""
  seen: BaseException | None = error
  while seen is not None:
    yield seen
    seen = seen.__cause__ or seen.__context__


def is_transient(error: BaseException) -> bool:
  """True when ``error`` (or an error it wraps) says the store is unreachable or busy: an HTTP
  408, 429 or 5xx, a connection failure or time-out, a credentials refresh that failed, or
  TensorStore's UNAVAILABLE / DEADLINE_EXCEEDED. Missing objects, failed preconditions and
  denied permissions are answers, not outages: False.

  Examples:
    >>> is_transient(ConnectionResetError())
    True
    >>> is_transient(FileNotFoundError('gs://bucket/run/metrics.jsonl'))
    False
  """
  for cause in error_chain(error):
    if isinstance(cause, (FileNotFoundError, FileExistsError, PermissionError)):
      return False
    status = getattr(cause, "code", None) or getattr(cause, "status", None)
    if isinstance(status, (int, str)) and str(status).isdigit():  # gcsfs's HttpError, aiohttp's
      return int(status) in _TRANSIENT_HTTP
    if isinstance(cause, _transient_types()) or _TRANSIENT_STATUS.search(str(cause)):
      return True
  return False


def reason(error: BaseException) -> str:
  """The first line of ``error``'s message, or its type's name."""
  return (str(error).strip().splitlines() or [type(error).__name__])[0]


