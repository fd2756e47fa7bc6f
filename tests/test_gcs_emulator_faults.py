"""The fault-injecting GCS emulator (tests/gcs_emulator.py): each fault does what a real bucket
does, seen through plain HTTP requests (no client retries in between)."""

import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest


@pytest.fixture
def gcs(gcs_bucket):
  """``(bucket, object prefix)`` of a fresh prefix."""
  return gcs_bucket.removeprefix("gs://"), uuid.uuid4().hex[:8]


def _request(method: str, path: str, data: bytes | None = None, **query) -> tuple[int, bytes]:
  url = f"{os.environ['STORAGE_EMULATOR_HOST']}{path}?{urllib.parse.urlencode(query)}"
  try:
    with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method),
                                timeout=10) as answer:
      return answer.status, answer.read()
  except urllib.error.HTTPError as error:
    return error.code, error.read()


def _upload(bucket, name, data, **query):
  return _request("POST", f"/upload/storage/v1/b/{bucket}/o", data, uploadType="media",
                  name=name, **query)[0]


def _download(bucket, name):
  return _request("GET", f"/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}",
                  alt="media")


def _delete(bucket, name, **query):
  return _request("DELETE", f"/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}",
                  **query)[0]


def test_refused_requests_have_no_effect_failed_ones_took_effect(gcs, gcs_faults):
  bucket, prefix = gcs
  gcs_faults.set(rate=1.0, statuses=[503], after_effect=0.0, match=f"{prefix}/before$")
  assert _upload(bucket, f"{prefix}/before", b"x") == 503
  gcs_faults.set(rate=1.0, statuses=[429], after_effect=1.0, match=f"{prefix}/after$")
  assert _upload(bucket, f"{prefix}/after", b"y") == 429
  assert gcs_faults.counts()["failed_after_effect"] == 1
  gcs_faults.clear()
  assert _download(bucket, f"{prefix}/before")[0] == 404
  assert _download(bucket, f"{prefix}/after") == (200, b"y")


def test_a_seeded_rate_fails_the_same_requests_each_time(gcs, gcs_faults):
  bucket, prefix = gcs
  _upload(bucket, f"{prefix}/a", b"a")
  outcomes = []
  for _ in range(2):
    gcs_faults.set(seed=3, rate=0.3, match=prefix)
    outcomes.append([_download(bucket, f"{prefix}/a")[0] for _ in range(40)])
  assert outcomes[0] == outcomes[1] and {200, 503, 429} == set(outcomes[0])
  assert 4 <= sum(status != 200 for status in outcomes[0]) <= 20  # 12 expected


def test_a_lost_answer_took_effect_and_generation_preconditions_hold(gcs, gcs_faults):
  bucket, prefix = gcs
  gcs_faults.set(lose=[{"match": f"POST .* {prefix}/lock$", "count": 1}])
  with pytest.raises((http.client.RemoteDisconnected, ConnectionError, urllib.error.URLError)):
    _upload(bucket, f"{prefix}/lock", b"mine", ifGenerationMatch=0)
  assert gcs_faults.counts()["answers_lost"] == 1
  assert _download(bucket, f"{prefix}/lock") == (200, b"mine")
  assert _upload(bucket, f"{prefix}/lock", b"retry", ifGenerationMatch=0) == 412
  status, metadata = _request("GET", f"/storage/v1/b/{bucket}/o/{prefix}%2Flock")
  assert status == 200
  generation = int(json.loads(metadata)["generation"])
  assert _upload(bucket, f"{prefix}/lock", b"other", ifGenerationMatch=generation + 1) == 412
  assert _delete(bucket, f"{prefix}/lock", ifGenerationMatch=generation + 1) == 412
  assert _delete(bucket, f"{prefix}/lock", ifGenerationMatch=generation) in (200, 204)
  assert _delete(bucket, f"{prefix}/lock", ifGenerationMatch=generation) == 404


def test_an_outage_drops_every_request_until_it_ends(gcs, gcs_faults):
  bucket, prefix = gcs
  _upload(bucket, f"{prefix}/a", b"a")
  gcs_faults.set(outages=[[0, 1.0]])
  with pytest.raises((http.client.RemoteDisconnected, ConnectionError, urllib.error.URLError)):
    _download(bucket, f"{prefix}/a")
  time.sleep(1.1)
  assert _download(bucket, f"{prefix}/a") == (200, b"a")
  assert gcs_faults.counts()["dropped_in_outage"] == 1



def test_a_completed_resumable_upload_answers_its_last_part_sent_again(gcs, gcs_faults):
  bucket, prefix = gcs
  name = f"{prefix}/commit_success.txt"
  start = urllib.request.Request(
      f"{os.environ['STORAGE_EMULATOR_HOST']}/upload/storage/v1/b/{bucket}/o?"
      + urllib.parse.urlencode({"uploadType": "resumable", "name": name}),
      data=json.dumps({"name": name}).encode(), method="POST",
      headers={"Content-Type": "application/json"})
  with urllib.request.urlopen(start, timeout=10) as answer:
    session = urllib.parse.urlparse(answer.headers["Location"])
  query = dict(urllib.parse.parse_qsl(session.query))
  gcs_faults.set(rate=1.0, statuses=[503], after_effect=1.0, match=f"{prefix}/commit_success")
  assert _request("POST", session.path, b"done", **query)[0] == 503  # took effect
  gcs_faults.clear()
  status, answer = _request("POST", session.path, b"done", **query)  # a client's retry
  assert status == 200 and json.loads(answer)["name"] == name
  assert _download(bucket, name) == (200, b"done")


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"], ids=["gcsfs's LF", "CRLF"])
@pytest.mark.parametrize("ending", [b"\r", b"\n", b"\r\n", b"x"])
def test_a_multipart_upload_stores_its_content_byte_for_byte(gcs, eol, ending):
  """Content ending in a line-break byte keeps it, whichever line break the client uses (the
  emulator's own MIME parser dropped a final \\r of gcsfs's uploads)."""
  bucket, prefix = gcs
  name, content = f"{prefix}/events", b"a record\r\n--not-the-boundary" + ending
  body = eol.join([b"--==0==", b"Content-Type: application/json; charset=UTF-8", b"",
                   json.dumps({"name": name}).encode(), b"--==0==",
                   b"Content-Type: application/octet-stream", b"", content, b"--==0==--"])
  request = urllib.request.Request(
      f"{os.environ['STORAGE_EMULATOR_HOST']}/upload/storage/v1/b/{bucket}/o?uploadType=multipart",
      data=body, method="POST", headers={"Content-Type": 'multipart/related; boundary="==0=="'})
  with urllib.request.urlopen(request, timeout=10) as answer:
    assert json.loads(answer.read())["size"] == str(len(content))
  assert _download(bucket, name) == (200, content)
