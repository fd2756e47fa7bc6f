"""What a store's error means: an outage to ride out, a failure that stops the run, or an answer.

The store clients (gcsfs and aiohttp, google-auth, requests, TensorStore, TensorFlow's file
system, google-api-core) report the same few events in many forms. :func:`failure_cause` reads
the chain of an error and names the event when the store, the network or the machine failed
(not the data):

========================  ===================================================  ==========
cause                     forms                                                transient
========================  ===================================================  ==========
``"unavailable"``         HTTP 429 or 5xx, a refused or reset connection,      yes
                          ``UNAVAILABLE``, a CURL error, a failed token
                          refresh
``"timed out"``           HTTP 408, :class:`TimeoutError` (fsspec, aiohttp,    yes
                          asyncio), ``DEADLINE_EXCEEDED``, CURL error 28
``"aborted"``             ``ABORTED`` (TensorStore once its own retries are    yes
                          spent: ``"ABORTED: All 3 retry attempts failed:
                          ..."``), ``CANCELLED``
``"unauthorised"``        HTTP 401, ``UNAUTHENTICATED``                        no
``"forbidden"``           HTTP 403 (gcsfs: ``OSError("Forbidden: ...")``),     no
                          :class:`PermissionError`, ``PERMISSION_DENIED``
``"out of memory"``       :class:`MemoryError`, ``RESOURCE_EXHAUSTED``         no
========================  ===================================================  ==========

An HTTP status in the message (TensorStore's ``[http_response_code='503']``) decides over the
status word before it. Anything else is an answer about the data (a missing object, a failed
precondition, bytes that do not decode): :func:`failure_cause` is None. :func:`is_transient`
says whether trying again may help (:func:`cfl_jax.store.retrying` retries those);
:mod:`cfl_jax.training.checkpointing` sets a checkpoint aside only when its read failed with an
answer, never on a failure.
"""

from collections.abc import Iterator
import functools
import re

UNAVAILABLE, TIMED_OUT, ABORTED = "unavailable", "timed out", "aborted"
UNAUTHORISED, FORBIDDEN, OUT_OF_MEMORY = "unauthorised", "forbidden", "out of memory"
_TRANSIENT_CAUSES = frozenset({UNAVAILABLE, TIMED_OUT, ABORTED})

_HTTP_CAUSES = {401: UNAUTHORISED, 403: FORBIDDEN, 408: TIMED_OUT, 429: UNAVAILABLE}
# TensorStore (absl) and gRPC status words, and TensorFlow's errors named after them.
_STATUS_CAUSES = {"UNAVAILABLE": UNAVAILABLE, "DEADLINE_EXCEEDED": TIMED_OUT,
                  "ABORTED": ABORTED, "CANCELLED": ABORTED, "UNAUTHENTICATED": UNAUTHORISED,
                  "PERMISSION_DENIED": FORBIDDEN, "RESOURCE_EXHAUSTED": OUT_OF_MEMORY}
_TENSORFLOW_CAUSES = {"UnavailableError": UNAVAILABLE, "DeadlineExceededError": TIMED_OUT,
                      "AbortedError": ABORTED, "CancelledError": ABORTED,
                      "UnauthenticatedError": UNAUTHORISED, "PermissionDeniedError": FORBIDDEN,
                      "ResourceExhaustedError": OUT_OF_MEMORY}
_HTTP_CODE_IN_MESSAGE = re.compile(r"http_response_code='(\d{3})'")
_STATUS_IN_MESSAGE = re.compile(r"\b(" + "|".join(_STATUS_CAUSES) + r")\b")
_CURL_TIMEOUT = re.compile(r"curl_code='28'")
_TENSORSTORE_SPEC = re.compile(r"\s*\[tensorstore_spec(\[\d+\])?='[^']*'\]")


class StoreUnavailable(RuntimeError):
  """The store failed the run: it kept failing with transient errors for longer than the retry
  budget, or it refused the run (unauthorised, forbidden), or a read could not finish (out of
  memory). Nothing was lost and no checkpoint was moved; running again (once the cause is
  mended) resumes from the newest checkpoint."""


@functools.cache
def _connection_types() -> tuple[type[BaseException], ...]:
  """Client exceptions that mean the store is unreachable (of the clients that are installed):
  connection failures, broken transfers, failed credential refreshes."""
  found: list[type[BaseException]] = [ConnectionError]
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
    found += [requests.ConnectionError, requests.exceptions.ChunkedEncodingError]
  except ImportError:
    pass
  return tuple(found)


@functools.cache
def _timeout_types() -> tuple[type[BaseException], ...]:
  """Time-outs: Python's (fsspec's, aiohttp's and asyncio's derive from it) and requests'."""
  try:
    import requests  # pylint: disable=g-import-not-at-top
    return TimeoutError, requests.Timeout
  except ImportError:
    return (TimeoutError,)


def error_chain(error: BaseException) -> Iterator[BaseException]:
  """``error`` and the errors it was raised from or while handling, outermost first."""
  seen: BaseException | None = error
  while seen is not None:
    yield seen
    seen = seen.__cause__ or seen.__context__


def _http_status(error: BaseException) -> int | None:
  """The HTTP status an error carries: gcsfs's ``HttpError.code``, aiohttp's ``.status``,
  requests' ``.response.status_code``, TensorStore's ``[http_response_code='...']``."""
  for status in (getattr(error, "code", None), getattr(error, "status", None),
                 getattr(getattr(error, "response", None), "status_code", None)):
    if isinstance(status, (int, str)) and str(status).isdigit() and 100 <= int(status) < 600:
      return int(status)
  found = _HTTP_CODE_IN_MESSAGE.search(str(error))
  return int(found.group(1)) if found else None


def _cause_of_one(error: BaseException) -> tuple[bool, str | None]:
  """``(decided, cause)`` for one error of a chain; not decided when it says nothing."""
  if isinstance(error, (FileNotFoundError, FileExistsError)):
    return True, None
  status = _http_status(error)
  if status is not None:
    return True, _HTTP_CAUSES.get(status, UNAVAILABLE if status >= 500 else None)
  if isinstance(error, PermissionError) or str(error).startswith("Forbidden: "):
    return True, FORBIDDEN
  if isinstance(error, MemoryError):
    return True, OUT_OF_MEMORY
  if isinstance(error, _timeout_types()) or _CURL_TIMEOUT.search(str(error)):
    return True, TIMED_OUT
  if type(error).__module__.startswith("tensorflow") and type(error).__name__ in (
      _TENSORFLOW_CAUSES):
    return True, _TENSORFLOW_CAUSES[type(error).__name__]
  if isinstance(error, _connection_types()) or "CURL error" in str(error):
    return True, UNAVAILABLE
  status_word = _STATUS_IN_MESSAGE.search(str(error))
  if status_word:
    return True, _STATUS_CAUSES[status_word.group(1)]
  return False, None


def failure_cause(error: BaseException) -> str | None:
  """What failed, when ``error`` (or an error it wraps, outermost first) says the store, the
  network or the machine failed: ``"unavailable"``, ``"timed out"``, ``"aborted"``,
  ``"unauthorised"``, ``"forbidden"`` or ``"out of memory"`` (see the module's table); None
  for an answer about the data.

  Examples:
    >>> failure_cause(ValueError("ABORTED: All 3 retry attempts failed: Service Unavailable "
    ...                          "[http_response_code='503']"))
    'unavailable'
    >>> failure_cause(ValueError("PERMISSION_DENIED: [http_response_code='401']"))
    'unauthorised'
    >>> failure_cause(ValueError("Expecting value: line 1 column 12 (char 11)")) is None
    True
  """
  for cause in error_chain(error):
    decided, found = _cause_of_one(cause)
    if decided:
      return found
  return None


def is_transient(error: BaseException) -> bool:
  """True when ``error`` (or an error it wraps) says the store is unreachable, slow or busy
  (:func:`failure_cause` is "unavailable", "timed out" or "aborted"): trying again may help.
  Missing objects, failed preconditions, denied permissions and exhausted memory are not.

  Examples:
    >>> is_transient(ConnectionResetError())
    True
    >>> is_transient(FileNotFoundError('gs://bucket/run/metrics.jsonl'))
    False
  """
  return failure_cause(error) in _TRANSIENT_CAUSES


def reason(error: BaseException) -> str:
  """The first line of ``error``'s message (or its type's name), after its
  :func:`failure_cause` unless the line names it, without TensorStore's ``[tensorstore_spec=...]``.

  Examples:
    >>> reason(TimeoutError())
    'timed out: TimeoutError'
    >>> reason(FileNotFoundError('gs://bucket/run/metrics.jsonl'))
    'gs://bucket/run/metrics.jsonl'
  """
  line = (str(error).strip().splitlines() or [type(error).__name__])[0]
  line = _TENSORSTORE_SPEC.sub("", line)  # TensorStore's specs of what it read: kilobytes
  cause = failure_cause(error)
  return line if cause is None or cause in line.lower() else f"{cause}: {line}"


