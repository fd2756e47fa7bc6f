"""Starts ``gcp-storage-emulator`` (a GCS JSON API server) with two of real GCS's behaviours it
lacks, which the clients under test rely on:

* downloads carry ``x-goog-generation`` (and ``x-goog-metageneration``): tensorstore, which orbax
  writes arrays with, reads an object's generation from that header and fails with "Malformed
  StorageGeneration" without it;
* uploads honour the ``ifGenerationMatch`` precondition (``0``: only if absent), answering 412
  otherwise: the workdir lock's create-only write and tensorstore's conditional manifest writes.

Usage: ``python tests/gcs_emulator.py PORT BUCKET`` (in memory, on 127.0.0.1, until killed).
"""

from http import HTTPStatus
import sys

from gcp_storage_emulator import exceptions
from gcp_storage_emulator.handlers import objects


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


def _insert_with_precondition(original):
  def insert(request, response, storage, *args, **kwargs):
    expected = request.query.get("ifGenerationMatch")
    if expected is not None:
      name = request.query.get("name", [None])[0]
      if name is None and isinstance(request.data, dict):  # multipart: the name is in the body
        name = request.data["meta"].get("name")
      if name is not None and _generation(storage, request.params["bucket_name"],
                                          name) != expected[0]:
        response.status = HTTPStatus.PRECONDITION_FAILED
        response.json({"error": {"code": 412, "message": "Precondition Failed"}})
        return None
    return original(request, response, storage, *args, **kwargs)
  return insert


def main(port: int, bucket: str) -> None:
  # The server module builds its routing table from these names when it is imported.
  objects.download = _download_with_generation(objects.download)
  objects.insert = _insert_with_precondition(objects.insert)
  from gcp_storage_emulator import server  # pylint: disable=g-import-not-at-top
  server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()


if __name__ == "__main__":
  main(int(sys.argv[1]), sys.argv[2])
