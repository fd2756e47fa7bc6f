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
  retrying after a lost or failed answer) is answered 200 with the object, not 404;
* a multipart upload stores its content byte for byte: the emulator's MIME parser took a final
  ``\r`` of the content for part of the line break before the closing boundary (gcsfs ends its
  lines with ``\n``) and dropped it, cutting the last record of one TensorBoard event file in
  about 128 (its last byte, a checksum's, is ``\r`` that often).

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
* ``stalls``: ``[start, seconds]`` windows in which every request matching ``stall_match`` (all
  by default) is read and left unanswered (the connection stays open) until its window ends;
  then its connection closes, the request without effect: a store that accepts and never
  answers.
* ``delays``: ``[{"match": regex, "seconds": s}]``: requests matching ``regex`` are answered
  (and take effect) only ``s`` seconds after they arrive: a slow store.
* ``black_holes``: ``[start, seconds]`` windows in which the server accepts no connection: new
  ones wait in the kernel's queue and, once it is full, are not even connected (a host whose
  packets are dropped). The control path is unreachable in such a window too.

Requests are served concurrently, one thread each (a stalled or delayed request holds no other
up); their effects on the stored objects happen one at a time.

A request is matched (``re.search``) against ``"METHOD PATH OBJECT"``: its method, its URL path
(decoded) and the object it names (from the path, the ``name`` query or a multipart upload's
metadata). Plans are meant for one test's prefix, e.g. ``match: "/abcd1234/"``.

Usage: ``python tests/gcs_emulator.py PORT BUCKET`` (in memory, on 127.0.0.1, until killed), or
:func:`serving` from Python (the tests' ``gcs_bucket`` fixture, the benchmarks).
"""

from collections.abc import Iterator
import contextlib
import email.message
import email.parser
from http import HTTPStatus
from http import server as http_server
import io
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
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


def _multipart_read_exactly(original, server):
  """The server's body reader, with a ``multipart/related`` upload split at its boundaries by the
  client's own line break (that of the first boundary line), every other byte kept."""

  def read_data(request_handler, query):
    content_type = request_handler.headers.get("Content-Type") or ""
    if not content_type.startswith("multipart/related"):
      return original(request_handler, query)
    raw = server._decode_raw_data(server._read_raw_data(request_handler), request_handler)  # pylint: disable=protected-access
    header = email.message.Message()
    header["Content-Type"] = content_type
    delimiter = b"--" + header.get_param("boundary").encode()
    first_line_end = raw.index(b"\n", raw.index(delimiter))
    eol = b"\r\n" if raw[first_line_end - 1:first_line_end] == b"\r" else b"\n"
    metadata_part, content_part = raw[first_line_end + 1:].split(eol + delimiter + eol, 1)
    content_headers, content = content_part.rsplit(eol + delimiter + b"--", 1)[0].split(
        eol + eol, 1)
    return {"meta": json.loads(metadata_part.split(eol + eol, 1)[1]), "content": content,
            "content-type": email.parser.BytesHeaderParser().parsebytes(
                content_headers + eol).get_content_type()}
  return read_data


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
                 "match": "", "outages": [], "lose": [], "stalls": [], "stall_match": "",
                 "delays": [], "black_holes": [], **plan}
    self.random = random.Random(self.plan["seed"])
    self.since = time.monotonic()
    self.lose = [dict(rule) for rule in self.plan["lose"]]
    self.counts = {"requests": 0, "refused": 0, "failed_after_effect": 0, "dropped_in_outage": 0,
                   "answers_lost": 0, "stalled": 0, "delayed": 0, "held_in_black_hole": 0}

  def _window_left(self, windows: str) -> float:
    """Seconds left of the ``windows`` (a plan key) window in force now; 0 when none is."""
    elapsed = time.monotonic() - self.since
    return max([start + seconds - elapsed for start, seconds in self.plan[windows]
                if start <= elapsed < start + seconds], default=0.0)

  def black_hole_left(self) -> float:
    """Seconds the server accepts no connection from now (counted once per held connection)."""
    left = self._window_left("black_holes")
    if left:
      self.counts["held_in_black_hole"] += 1
    return left

  def decide(self, description: str) -> tuple[str, float]:
    """``(action, value)``: action is 'pass', 'refuse' or 'fail_after' (value: the status),
    'drop', 'lose', 'stall' (value: seconds until the connection closes) or 'delay' (value:
    seconds before the request is served)."""
    self.counts["requests"] += 1
    if any(start <= time.monotonic() - self.since < start + seconds
           for start, seconds in self.plan["outages"]):
      self.counts["dropped_in_outage"] += 1
      return "drop", 0
    stall = self._window_left("stalls")
    if stall and re.search(self.plan["stall_match"], description):
      self.counts["stalled"] += 1
      return "stall", stall
    for rule in self.plan["delays"]:
      if re.search(rule["match"], description):
        self.counts["delayed"] += 1
        return "delay", rule["seconds"]
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


def _with_faults(original, faults: Faults, storage_lock: threading.Lock):
  """``RequestHandler.do_<METHOD>`` with the fault plan and its control path in front; the
  emulator's own handling (its storage is not thread-safe) under ``storage_lock``."""
  def serve(handler):
    with storage_lock:
      original(handler)

  def handle(handler):
    method = handler.command
    body = _read_body(handler)
    if urlparse(handler.path).path == CONTROL_PATH:
      with storage_lock:
        if method == "PUT":
          faults.set(json.loads(body or b"{}"))
        elif method == "DELETE":
          faults.set({})
        _answer(handler, 200, {"plan": faults.plan, "counts": faults.counts})
      return
    with storage_lock:
      action, status = faults.decide(_description(method, handler.path, body))
    if action == "stall":
      time.sleep(status)
      handler.close_connection = True
      return
    if action == "delay":
      time.sleep(status)
      serve(handler)
      return
    if action == "drop":
      handler.close_connection = True
      return
    if action == "refuse":
      _answer(handler, int(status), {"error": {"code": status, "message": "injected fault"}})
      return
    if action in ("fail_after", "lose"):
      real_answer, handler.wfile = handler.wfile, io.BytesIO()
      serve(handler)  # takes effect; its answer goes nowhere
      handler.wfile = real_answer
      if action == "lose":
        handler.close_connection = True
      else:
        _answer(handler, int(status), {"error": {"code": status, "message": "injected fault"}})
      return
    serve(handler)
  return handle


def _threaded_server_with_black_holes(faults: Faults):
  """An HTTP server class serving each connection in its own thread, and accepting none while
  a black hole of ``faults`` is in force."""
  class Server(http_server.ThreadingHTTPServer):
    daemon_threads = True

    def get_request(self):
      time.sleep(faults.black_hole_left())  # the pending connection waits in the kernel
      return super().get_request()

  return Server


def main(port: int, bucket: str) -> None:
  # The server module builds its routing table from these names when it is imported.
  objects.download = _download_with_generation(objects.download)
  objects.insert = _insert_with_precondition(objects.insert)
  objects.delete = _delete_with_precondition(objects.delete)
  # Also reached from insert (POST), which passes the parts of resumable uploads on to it.
  objects.upload_partial = _upload_partial_of_completed_sessions(objects.upload_partial)
  from gcp_storage_emulator import server, storage  # pylint: disable=g-import-not-at-top
  # In memory, the emulator still serialises the metadata of every object it holds (deleted ones
  # too) to its `.meta` file after each write: a write cost 17 ms with 500 objects in the bucket
  # and 116 ms with 3,000, under the storage lock. Nothing reads that file back in memory.
  storage.Storage._write_config_to_file = lambda self: None  # pylint: disable=protected-access
  server._read_data = _multipart_read_exactly(server._read_data, server)  # pylint: disable=protected-access
  faults, storage_lock = Faults(), threading.Lock()
  for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
    name = f"do_{method}"
    setattr(server.RequestHandler, name, _with_faults(getattr(server.RequestHandler, name),
                                                      faults, storage_lock))
  # The emulator's API thread builds its server from http.server's HTTPServer (in this process).
  server.server.HTTPServer = _threaded_server_with_black_holes(faults)
  server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()


@contextlib.contextmanager
def serving(bucket: str, log_path: str | os.PathLike) -> Iterator[str]:
  """This module's emulator serving ``bucket`` in a subprocess (its output in ``log_path``) while
  entered, with what a user of an emulator sets in ``os.environ``, and nothing else: its address
  for gcsfs and google-cloud-storage (``STORAGE_EMULATOR_HOST``) and for TensorStore
  (``TENSORSTORE_GCS_HTTP_URL``), and a test token. Yields the emulator's URL; the environment
  is restored on exit.
  """
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  url = f"http://127.0.0.1:{port}"
  environment = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
                 "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x", "GOOGLE_CLOUD_PROJECT": "cfl-jax-test"}
  saved = {key: os.environ.get(key) for key in environment}
  with open(log_path, "w", encoding="utf-8") as log:
    server = subprocess.Popen([sys.executable, __file__, str(port), bucket], stdout=log,
                              stderr=subprocess.STDOUT)
    os.environ.update(environment)
    try:
      deadline = time.time() + 30
      while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
          break
        if server.poll() is not None or time.time() > deadline:
          raise RuntimeError(f"the GCS emulator did not start (exit {server.poll()}); see "
                             f"{log_path}")
        time.sleep(0.05)
      yield url
    finally:
      server.terminate()
      server.wait(10)
      for key, value in saved.items():
        if value is None:
          os.environ.pop(key, None)
        else:
          os.environ[key] = value


if __name__ == "__main__":
  main(int(sys.argv[1]), sys.argv[2])
