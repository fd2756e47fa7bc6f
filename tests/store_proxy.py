"""A loopback TCP proxy between one runner process and the GCS emulator, to cut it off the store."""

import contextlib
import re
import socket
import threading
import time

_KEPT = 8192  # bytes kept of each forwarded request: its head and the start of its body


def _close(ends: list[socket.socket]) -> None:
  for end in ends:
    with contextlib.suppress(OSError):
      end.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked on it
    end.close()


class StoreProxy:
  """Forwards connections to the emulator at ``upstream`` (``http://host:port``) from :attr:`url`,
  which a process is given as its ``STORAGE_EMULATOR_HOST`` and ``TENSORSTORE_GCS_HTTP_URL``.

  ``cut()`` takes the store away: every connection is closed, and each new one is closed at once
  (:attr:`first_refused` notes the first). So does the first request containing :attr:`cut_on`,
  which is not forwarded (:attr:`cut_at` notes when). ``cut(hold=True)`` black-holes it instead,
  as a stalled network does: the process's connections stay open but nothing passes either way,
  new ones are accepted and held alike, and the emulator's ends are closed, so it goes on serving
  others. :meth:`heal` closes the connections, as a partition longer than TCP's patience does,
  and forwards again. :attr:`requests` logs each forwarded request as ``(time, its first 8 KiB)``.
  Times are ``time.monotonic()``.
  """

  def __init__(self, upstream: str):
    host, port = upstream.removeprefix("http://").rsplit(":", 1)
    self._upstream = (host, int(port))
    self._listener = socket.create_server(("127.0.0.1", 0))
    self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
    self._lock = threading.Lock()  # orders connections and cuts
    self._cut = self._hold = False
    self._clients: list[socket.socket] = []
    self._upstreams: list[socket.socket] = []
    self.cut_on: bytes | None = None
    self.cut_at: float | None = None
    self.first_refused: float | None = None
    self.requests: list[tuple[float, bytearray]] = []
    threading.Thread(target=self._accept, daemon=True).start()

  def _accept(self) -> None:
    while True:
      try:
        client, _ = self._listener.accept()
      except OSError:
        return  # closed
      with self._lock:
        if self._cut and not self._hold:
          self.first_refused = self.first_refused or time.monotonic()
          client.close()
          continue
        upstream = None if self._cut else socket.create_connection(self._upstream)
        self._clients.append(client)
        if upstream is not None:
          self._upstreams.append(upstream)
      threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
      if upstream is not None:
        threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

  def _pump(self, source: socket.socket, target: socket.socket | None, outbound: bool) -> None:
    """Passes what ``source`` sends on to ``target`` (None: held) while not cut; ``outbound``:
    from the process, so logged and checked for :attr:`cut_on`."""
    request = None
    with contextlib.suppress(OSError):
      while data := source.recv(1 << 16):
        if self._cut or target is None:
          continue  # black-holed
        if outbound and self.cut_on is not None and self.cut_on in data:
          self.cut_at = time.monotonic()
          self.cut()
          return
        if outbound and re.match(rb"(GET|POST|PUT|DELETE|PATCH) ", data):
          request = bytearray(data[:_KEPT])
          self.requests.append((time.monotonic(), request))
        elif outbound and request is not None and len(request) < _KEPT:
          request += data[:_KEPT - len(request)]
        target.sendall(data)
    if target is not None and not self._hold:  # a held cut keeps the process's end open
      with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)

  def cut(self, hold: bool = False) -> None:
    with self._lock:
      self._cut, self._hold = True, hold
      ends, self._upstreams = self._upstreams, []
      if not hold:
        ends, self._clients = ends + self._clients, []
    _close(ends)

  def heal(self) -> None:
    with self._lock:
      self._cut = self._hold = False
      clients, self._clients = self._clients, []
    _close(clients)

  def close(self) -> None:
    with contextlib.suppress(OSError):
      self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept loop
    self._listener.close()
    self.cut()
