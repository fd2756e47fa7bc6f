"""Starts ``gcp-storage-emulator`` (a GCS JSON API server) with real GCS's behaviours that it lacks
and the faults of a real bucket, on demand.

Real GCS behaviours the clients under test rely on:

* downloads carry ``x-goog-generation`` (and ``x-goog-metageneration``): tensorstore, which orbax
  writes arrays with, reads an object's generation from that header and fails with "Malformed
  StorageGeneration" without it;
* uploads and deletes honour the ``ifGenerationMatch`` precondition (``0``: only if absent),
  answering 412 otherwise: the workdir lock's conditional writes and tensorstore's conditional
  manifest writes;
* a resumable upload session stays valid once complete: its last part sent again (a client
  retrying after a lost or failed answer) is answered 200 with the object, not 404.

Faults (:class:`Faults`), set by the tests through the control path ``/_faults`` (``PUT`` a JSON
plan, ``GET`` the counts of what was injected, ``DELETE`` to clear), as a busy or failing bucket
answers:

* ``rate``: that fraction of the requests matching ``match`` is answered with one of ``statuses``
  (503 and 429 by default); a fraction ``after_effect`` of those take effect first (the write is
  done, the answer says it failed), the rest are refused untouched. Decisions come from a
  ``random.Random(seed)``, so a plan's faults repeat from run to run for the same requests.
* ``outages``: ``[start, seconds]`` windows, from when the plan was set, in which every request is
  dropped unanswered (the connection closes): the store is unreachable.
* ``lose``: ``[{"match": regex, "count": n}]``: the next ``n`` requests matching ``regex`` take
  effect, then their connection closes without an answer (a lost answer).

A request is matched (``re.search``) against ``"METHOD PATH OBJECT"``: its method, its URL path
(decoded) and the object it names (from the path, the ``name`` query or a multipart upload's
metadata). Plans are meant for one test's prefix, e.g. ``match: "/abcd1234/"``.

Usage: ``python tests/gcs_emulator.py PORT BUCKET`` (in memory, on 127.0.0.1, until killed).
"""

from http import HTTPStatus
import io
import json
import random
import re
import sys
import time
from urllib.parse import parse_qs
from urllib.parse import unquote
from urllib.parse import urlparse

from gcp_storage_emulator import exceptions
from gcp_storage_emulator.handlers import objects

CONTROL_PATH = "/_faults"


def _generation(storage, bucket: str, name: str) -> str:
  try:
    return storage.get_file_obj(bucket, name)["generation"]
  except exceptions.NotFound:
    return "0"


def _download_with_generation(original):
  def download(request, response, storage, *args, **kwargs):
    with_generation = original(request, response, storage, *args, **kwargs)
    if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      response["x-goog-generation"] = obj["generation"]
      response["x-goog-metageneration"] = obj["metageneration"]
    return with_generation
  return download


def _precondition_failed(response) -> None:
  response.status = HTTPStatus.PRECONDITION_FAILED
  response.json({"error": {"code": 412, "message": "Precondition Failed"}})


def _insert_with_precondition(original):
  def insert(request, response, storage, *args, **kwargs):
    expected = request.query.get("ifGenerationMatch")
    if expected is not None:
      name = request.query.get("name", [None])[0]
      if name is None and isinstance(request.data, dict):  # multipart: the name is in the body
        name = request.data["meta"].get("name")
      if name is not None and _generation(storage, request.params["bucket_name"],
                                          name) != expected[0]:
        _precondition_failed(response)
        return None
    return original(request, response, storage, *args, **kwargs)
  return insert


def _delete_with_precondition(original):
  def delete(request, response, storage, *args, **kwargs):
    expected = request.query.get("ifGenerationMatch")
    if expected is not None:
      current = _generation(storage, request.params["bucket_name"], request.params["object_id"])
      if current == "0":
        response.status = HTTPStatus.NOT_FOUND
        return None
      if current != expected[0]:
        _precondition_failed(response)
        return None
    return original(request, response, storage, *args, **kwargs)
  return delete


def _upload_partial_of_completed_sessions(original):
  completed: dict[str, dict] = {}  # upload_id -> the object its session created

  def upload_partial(request, response, storage, *args, **kwargs):
    upload_id = request.query.get("upload_id", [""])[0]
    if upload_id in completed:
      response.json(completed[upload_id])
      return None
    try:
      session = storage.get_resumable_file_obj(upload_id)
    except exceptions.NotFound:
      session = None
    answer = original(request, response, storage, *args, **kwargs)
    if session is not None and response.status == HTTPStatus.OK:
      completed[upload_id] = storage.get_file_obj(session["bucket"], session["name"])
    return answer
  return upload_partial


_OBJECT_IN_PATH = re.compile(r"/b/[^/]+/o/(.+)$")
_NAME_IN_METADATA = re.compile(rb'"name"\s*:\s*"([^"]+)"')


def _description(method: str, path: str, body: bytes) -> str:
  """``"METHOD PATH OBJECT"`` of a request, the text fault plans are matched against."""
  url = urlparse(path)
  name = ""
  in_path = _OBJECT_IN_PATH.search(url.path)
  if in_path:
    name = unquote(in_path.group(1))
  elif "name" in parse_qs(url.query):
    name = parse_qs(url.query)["name"][0]
  else:
    in_body = _NAME_IN_METADATA.search(body[:4096])
    if in_body:
      name = in_body.group(1).decode()
  return f"{method} {unquote(url.path)} {name}"


class Faults:
  """The fault plan in force and the counts of what it injected (see the module docstring)."""

  def __init__(self):
    self.set({})

  def set(self, plan: dict) -> None:
    self.plan = {"seed": 0, "rate": 0.0, "statuses": [503, 429], "after_effect": 0.5,
                 "match": "", "outages": [], "lose": [], **plan}
    self.random = random.Random(self.plan["seed"])
    self.since = time.monotonic()
    self.lose = [dict(rule) for rule in self.plan["lose"]]
    self.counts = {"requests": 0, "refused": 0, "failed_after_effect": 0, "dropped_in_outage": 0,
                   "answers_lost": 0}

  def decide(self, description: str) -> tuple[str, int]:
    """``(action, status)``: action is 'pass', 'refuse', 'fail_after', 'drop' or 'lose'."""
    self.counts["requests"] += 1
    elapsed = time.monotonic() - self.since
    if any(start <= elapsed < start + seconds for start, seconds in self.plan["outages"]):
      self.counts["dropped_in_outage"] += 1
      return "drop", 0
    for rule in self.lose:
      if rule["count"] > 0 and re.search(rule["match"], description):
        rule["count"] -= 1
        self.counts["answers_lost"] += 1
        return "lose", 0
    if (self.plan["rate"] and re.search(self.plan["match"], description)
        and self.random.random() < self.plan["rate"]):
      status = self.random.choice(self.plan["statuses"])
      if self.random.random() < self.plan["after_effect"]:
        self.counts["failed_after_effect"] += 1
        return "fail_after", status
      self.counts["refused"] += 1
      return "refuse", status
    return "pass", 0


def _read_body(handler) -> bytes:
  """The request body (``Content-Length`` or chunked), left for the emulator to read again."""
  length = handler.headers.get("Content-Length")
  if length:
    body = handler.rfile.read(int(length))
  elif (handler.headers.get("Transfer-Encoding") or "").lower() == "chunked":
    body = b""
    while size := int(handler.rfile.readline().strip() or b"0", 16):
      body += handler.rfile.read(size)
      handler.rfile.readline()
    handler.rfile.readline()
    del handler.headers["Transfer-Encoding"]
    handler.headers["Content-Length"] = str(len(body))
  else:
    body = b""
  handler.rfile = io.BytesIO(body)
  return body


def _answer(handler, status: int, payload: dict) -> None:
  content = json.dumps(payload).encode()
  handler.send_response(status)
  handler.send_header("Content-Type", "application/json")
  handler.send_header("Content-Length", str(len(content)))
  handler.send_header("Connection", "close")
  handler.end_headers()
  handler.wfile.write(content)
  handler.close_connection = True


def _with_faults(original, faults: Faults):
  """``RequestHandler.do_<METHOD>`` with the fault plan and its control path in front."""
  def handle(handler):
    method = handler.command
    body = _read_body(handler)
    if urlparse(handler.path).path == CONTROL_PATH:
      if method == "PUT":
        faults.set(json.loads(body or b"{}"))
      elif method == "DELETE":
        faults.set({})
      _answer(handler, 200, {"plan": faults.plan, "counts": faults.counts})
      return
    action, status = faults.decide(_description(method, handler.path, body))
    if action == "drop":
      handler.close_connection = True
      return
    if action == "refuse":
      _answer(handler, status, {"error": {"code": status, "message": "injected fault"}})
      return
    if action in ("fail_after", "lose"):
      real_answer, handler.wfile = handler.wfile, io.BytesIO()
      original(handler)  # takes effect; its answer goes nowhere
      handler.wfile = real_answer
      if action == "lose":
        handler.close_connection = True
      else:
        _answer(handler, status, {"error": {"code": status, "message": "injected fault"}})
      return
    original(handler)
  return handle


def main(port: int, bucket: str) -> None:
  # The server module builds its routing table from these names when it is imported.
  objects.download = _download_with_generation(objects.download)
  objects.insert = _insert_with_precondition(objects.insert)
  objects.delete = _delete_with_precondition(objects.delete)
  # Also reached from insert (POST), which passes the parts of resumable uploads on to it.
  objects.upload_partial = _upload_partial_of_completed_sessions(objects.upload_partial)
  from gcp_storage_emulator import server  # pylint: disable=g-import-not-at-top
  faults = Faults()
  for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
    name = f"do_{method}"
    setattr(server.RequestHandler, name, _with_faults(getattr(server.RequestHandler, name),
                                                      faults))
  server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()


if __name__ == "__main__":
  main(int(sys.argv[1]), sys.argv[2])
