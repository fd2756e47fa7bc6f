"""The JSON record each benchmark writes with ``--record PATH`` (read by gpu_check.sh, tests)."""

from __future__ import annotations

import json
import pathlib
import platform

import jax


def write_record(path: pathlib.Path, *, title: str, args: dict, rows: list[dict],
                 label: str = "loss") -> None:
  """Writes ``{device, cpu, backend, jax, title, args, rows}``; each row names a ``loss`` (or what
  ``label`` says, then stored as the record's ``label``)."""
  device = jax.devices()[0]
  record = {"device": device.device_kind, "cpu": cpu_name(), "backend": jax.default_backend(),
            "jax": jax.__version__, "title": title, "args": args, "rows": rows}
  if label != "loss":
    record["label"] = label
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(record, indent=1) + "\n")


def cpu_name() -> str:
  """The host CPU's model name (as ``lscpu`` shows it), or ``platform.processor()``."""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"
