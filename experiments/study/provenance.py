"""How a run is reproduced: its config, its ``experiments.train`` command, and the code it ran.

Every printed command carries this process's JAX setup (``JAX_PLATFORMS``, ``XLA_FLAGS`` or
``--cpu_devices``) and the cell's overrides; the runner checks it by parsing the command with
``config_flags`` and comparing the resolved configs.
"""

from collections.abc import Mapping, Sequence
import hashlib
import json
import os
import platform
import re
import shlex
import subprocess
from typing import Any

from absl import flags

from experiments import config_files

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNNER = "experiments/train.py"
SOURCE_DIRS = ("cfl_jax",)
CONFIG_DIR = "experiments/configs/"  # every config file a command may name lies here

# The environment device_setup writes: variable -> the values it may have.
_ENV_VALUES = {"JAX_PLATFORMS": r"[a-z]+", "JAX_NUM_CPU_DEVICES": r"[1-9]\d*",
               "XLA_FLAGS": r"--xla_\w+=[\w.]+( --xla_\w+=[\w.]+)*"}
# The experiments.train arguments reproduce_argv writes (and device_setup's --cpu_devices).
_FLAGS = (r"--config=[\w./-]+\.py", r"--config\.\w+(\.\w+)*=.*", r"--workdir=.+",
          r"--cpu_devices=[1-9]\d*")
_FLAG_NAMES = ("--config", "--workdir", "--cpu_devices")
_COMMAND_SHAPE = ("'[JAX_PLATFORMS=...] python -m experiments.train --config=experiments/configs/"
                  "FILE.py --config.KEY=VALUE... --workdir=DIR [--cpu_devices=N]'")


def base_config(config_file: str):
  """``get_config()`` of ``config_file`` (relative to the repository root), as the runner
  loads it."""
  return config_files.load(os.path.join(REPO, config_file))


def build_config(config_file: str, overrides: Mapping[str, Any]):
  """The config of ``config_file`` with dotted-key ``overrides`` applied (type-checked)."""
  config = base_config(config_file)
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def resolved_dict(config) -> dict[str, Any]:
  """``config`` completed and validated by the trainer, as plain JSON values."""
  from cfl_jax.training import resolve_config  # pylint: disable=g-import-not-at-top
  return json.loads(resolve_config(config).to_json())


def _flag_value(value: Any) -> str:
  return repr(value) if isinstance(value, float) else str(value)


def device_setup() -> tuple[dict[str, str], list[str]]:
  """(environment prefix, runner flags) that give a fresh ``experiments.train`` this process's
  JAX setup: platform, and on CPU the XLA host-device count."""
  import jax  # pylint: disable=g-import-not-at-top
  platform = jax.devices()[0].platform
  env = {"JAX_PLATFORMS": platform}
  extra = []
  if platform == "cpu":
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
      env["XLA_FLAGS"] = os.environ["XLA_FLAGS"]
    elif "JAX_NUM_CPU_DEVICES" in os.environ:
      env["JAX_NUM_CPU_DEVICES"] = os.environ["JAX_NUM_CPU_DEVICES"]
    else:
      extra.append(f"--cpu_devices={jax.device_count()}")
  return env, extra


def reproduce_argv(config_file: str, overrides: Mapping[str, Any], workdir: str,
                   extra_flags: Sequence[str]) -> list[str]:
  """``experiments.train`` arguments (after ``python -m experiments.train``) for ``overrides``."""
  return [f"--config={config_file}",
          *(f"--config.{key}={_flag_value(value)}" for key, value in overrides.items()),
          f"--workdir={workdir}", *extra_flags]


def reproduce_command(env: Mapping[str, str], argv: Sequence[str]) -> str:
  """The shell command (run from the repository root)."""
  prefix = [f"{key}={shlex.quote(value)}" for key, value in env.items()]
  return " ".join([*prefix, "python", "-m", "experiments.train", *map(shlex.quote, argv)])


def split_command(command: str) -> tuple[dict[str, str], list[str]]:
  """(environment, ``experiments.train`` arguments) of a :func:`reproduce_command` command.

  Only the shape this module writes is accepted, since results.json may come from anywhere (a
  bucket): ``[ENV=VALUE ...] python -m experiments.train --config=experiments/configs/FILE.py
  [--config.KEY=VALUE ...] --workdir=DIR [--cpu_devices=N]``, with the environment of
  :func:`device_setup` only.

  Raises:
    ValueError: naming the first part of ``command`` of another shape.

  Examples:
    >>> split_command('JAX_PLATFORMS=cpu python -m experiments.train '
    ...               '--config=experiments/configs/digits.py --workdir=runs/r')
    ({'JAX_PLATFORMS': 'cpu'}, ['--config=experiments/configs/digits.py', '--workdir=runs/r'])
    >>> split_command('python -m experiments.train --workdir=runs/r; rm -rf ~')
    Traceback (most recent call last):
    ...
    ValueError: Refusing to run ...: unexpected 'rm' (...)
  """

  def refuse(problem: str) -> ValueError:
    return ValueError(f"Refusing to run {command!r}: {problem} (an experiments.train command as "
                      f"the study writes it looks like {_COMMAND_SHAPE})")

  try:
    words = shlex.split(command)
  except ValueError as error:
    raise refuse(f"it is not a shell command ({error})") from None
  env = {}
  while words and re.fullmatch(r"\w+=.*", words[0]):
    key, value = words.pop(0).split("=", 1)
    if key not in _ENV_VALUES:
      raise refuse(f"environment variable {key} is not one the study sets "
                   f"({', '.join(_ENV_VALUES)})")
    if not re.fullmatch(_ENV_VALUES[key], value):
      raise refuse(f"{key}={value!r} is not a value the study writes")
    env[key] = value
  if words[:3] != ["python", "-m", "experiments.train"]:
    raise refuse(f"it does not run python -m experiments.train, but {' '.join(words[:3])!r}")
  argv = words[3:]
  for word in argv:
    flag = word.split("=", 1)[0]
    if not any(re.fullmatch(pattern, word, re.DOTALL) for pattern in _FLAGS):
      raise refuse(f"unexpected {word!r}" if flag == word or flag not in _FLAG_NAMES
                   else f"bad value in {word!r}")
  names = [word.split("=", 1)[0] for word in argv if not word.startswith("--config.")]
  for flag in ("--config", "--workdir"):
    if names.count(flag) != 1:
      raise refuse(f"{flag} must be given once")
  config_file = next(word.split("=", 1)[1] for word in argv if word.startswith("--config="))
  if (os.path.normpath(config_file) != config_file or not config_file.startswith(CONFIG_DIR)
      or not os.path.isfile(os.path.join(REPO, config_file))):
    raise refuse(f"--config={config_file} is not a config file under {CONFIG_DIR}")
  return env, argv


def parse_runner_config(argv: Sequence[str]):
  """The config ``experiments.train`` would build from ``argv`` (its config flags only)."""
  from ml_collections.config_flags import config_flags  # pylint: disable=g-import-not-at-top
  config_argv = ["experiments.train"] + [a for a in argv if a.startswith("--config")]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config", flag_values=values,
                                  lock_config=True, sys_argv=config_argv)
  cwd = os.getcwd()
  os.chdir(REPO)  # the command's config path is relative to the repository root
  try:
    values(config_argv)
  finally:
    os.chdir(cwd)
  return values.config


def _source_files(config_file: str) -> list[str]:
  paths = [RUNNER, config_file]
  for directory in SOURCE_DIRS:
    for root, _, names in os.walk(os.path.join(REPO, directory)):
      paths += [os.path.relpath(os.path.join(root, n), REPO) for n in names if n.endswith(".py")]
  return sorted(paths)


def source_fingerprint(config_file: str) -> str:
  """sha256 over the code a run executes (cfl_jax/**.py, the runner, the config file).

  A command reproduces its run only with the code that produced it: when the fingerprint in
  results.json differs from the checkout's, rerun the study or check the commands.
  """
  digest = hashlib.sha256()
  for path in _source_files(config_file):
    with open(os.path.join(REPO, path), "rb") as f:
      digest.update(path.encode() + b"\0" + f.read() + b"\0")
  return digest.hexdigest()


def code_version(config_file: str) -> dict[str, Any]:
  """The git commit, the code's files that differ from it, and the code's fingerprint."""
  def git(*args):
    try:
      return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
      return "unknown"
  dirty = git("status", "--porcelain", "--", *SOURCE_DIRS, RUNNER, config_file)
  return {"git_commit": git("rev-parse", "HEAD"),
          "source_fingerprint": source_fingerprint(config_file),
          "uncommitted_source_changes": dirty.splitlines()}


def cpu() -> str:
  """The CPU's model name and widest x86 vector extension (compiled kernels depend on it), e.g.
  ``'AMD EPYC (AVX2)'``."""
  try:
    with open("/proc/cpuinfo") as f:
      info = f.read()
  except OSError:
    return platform.processor() or platform.machine()
  model = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                if line.startswith("model name")), platform.machine())
  flags_ = set(next((line.split(":", 1)[1].split() for line in info.splitlines()
                     if line.startswith("flags")), []))
  widest = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"))
                 if flag in flags_), "SSE")
  return f"{model} ({widest})"
