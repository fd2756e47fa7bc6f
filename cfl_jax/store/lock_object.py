"""One GCS object that is written, overwritten and deleted only at the generation it was read at.

Every write and delete carries GCS's ``ifGenerationMatch`` precondition (``"0"``: only if absent),
so when two clients act on the same generation the store lets exactly one of them succeed and
answers the other 412. The requests go through gcsfs, which retries 408, 429, 5xx and dropped
connections on its own: a write whose answer was lost is sent again and then answered 412 (the
first one landed), which only a read back can tell from a rival's write.

Reads also report the object's age by the store's own clock (its ``updated`` time against the
``Date`` of the store's answer), so no host clock enters a decision.
"""

import asyncio
import dataclasses
import datetime
import email.utils
import json

from fsspec import asyn

from cfl_jax import store
from cfl_jax.store import fenced

_READ_ATTEMPTS = 5


@dataclasses.dataclass(frozen=True)
class Observation:
  """The object as read: its generation, its content, and its age in seconds by the store's
  clock (None when the store's answer has no ``Date``)."""

  generation: str
  content: bytes
  age: float | None


class GcsObject:
  """The object at a ``gs://`` URL, read with its generation and written on a generation.

  Args:
    url: ``gs://bucket/name``.

  Raises:
    ValueError: for a URL of another scheme.
  """

  def __init__(self, url: store.PathLike):
    self._fs, key = store.filesystem(url)
    if "gcs" not in self._fs.protocol:
      raise ValueError(f"{url} is not a gs:// URL; bucket workdirs are locked on GCS only.")
    self._bucket, self._name = key.split("/", 1)

  def read(self) -> Observation | None:
    """The object now, or None when there is none.

    Raises:
      RuntimeError: when it changes between every pair of reads (content, then metadata).
    """
    for _ in range(_READ_ATTEMPTS):
      try:
        headers, content = self._fs.call("GET", "b/{}/o/{}", self._bucket, self._name,
                                         alt="media")
        generation = headers["x-goog-generation"]
        headers, metadata = self._fs.call("GET", "b/{}/o/{}", self._bucket, self._name)
      except FileNotFoundError:
        return None
      metadata = json.loads(metadata)
      if metadata["generation"] == generation:  # else it changed between the two reads
        return Observation(generation, content, _age(metadata["updated"], headers.get("Date")))
    raise RuntimeError(f"gs://{self._bucket}/{self._name} changed at every read.")

  def write(self, content: bytes, generation: str, timeout: float | None = None) -> str | None:
    """Writes ``content`` if the object is at ``generation`` (``"0"``: absent), giving up
    (TimeoutError) after ``timeout`` seconds, gcsfs's own retries included.

    Returns:
      The new generation, or None when the store refused (412: the object is at another
      generation, perhaps one this client wrote but whose answer was lost).
    """
    # gcsfs's own uploads address the upload endpoint the same way.
    upload = f"{self._fs._location}/upload/storage/v1/b/{{}}/o"  # pylint: disable=protected-access
    request = self._fs._call(  # pylint: disable=protected-access (gcsfs's request, awaitable)
        "POST", upload, self._bucket, uploadType="media", name=self._name,
        ifGenerationMatch=generation, data=content,
        headers={"Content-Type": "application/octet-stream"})
    try:
      with fenced.outside_the_fence():  # the lease's own renewal
        _, answer = asyn.sync(self._fs.loop, asyncio.wait_for, request, timeout)
    except FileExistsError:  # gcsfs's name for 412
      return None
    except TimeoutError:
      if timeout is None:
        raise
      raise TimeoutError(f"no answer from the store within {timeout:.0f} s") from None
    return json.loads(answer)["generation"]

  def delete(self, generation: str) -> bool:
    """Deletes the object if it is at ``generation``; False when it is at another one (412).
    An absent object counts as deleted (a retried delete whose first answer was lost)."""
    try:
      with fenced.outside_the_fence():  # the lock's release, also after the lease ended
        self._fs.call("DELETE", "b/{}/o/{}", self._bucket, self._name,
                      ifGenerationMatch=generation)
    except FileNotFoundError:
      return True
    except FileExistsError:
      return False
    return True


def _age(updated: str, date: str | None) -> float | None:
  """Seconds from ``updated`` (RFC 3339) to the HTTP ``date`` of the store's answer."""
  if date is None:
    return None
  return (email.utils.parsedate_to_datetime(date)
          - datetime.datetime.fromisoformat(updated)).total_seconds()
