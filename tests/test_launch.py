"""Launchers: local multi-process runner, TPU pod dry run, GKE JobSet / xpk, SLURM sbatch."""

import io
import os
import shlex
import subprocess
import sys
import time

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from launch import _tpu, gke, local, slurm, tpu_pod  # noqa: E402

TRAIN = ["tokenlab", "train", "--config", "experiments/transformer_lm.py:size=1b",
         "--workdir", "gs://bucket/runs/lm"]


# ----------------------------------------------------------------------------- local


def test_process_env_sets_distributed_variables_and_keeps_other_xla_flags():
  base = {"XLA_FLAGS": "--xla_foo=1 --xla_force_host_platform_device_count=8", "HOME": "/h"}
  env = local.process_env(1, 3, 2, "localhost:1234", base=base)
  assert env["TOKENLAB_COORDINATOR"] == "localhost:1234"
  assert env["TOKENLAB_NUM_PROCESSES"] == "3"
  assert env["TOKENLAB_PROCESS_ID"] == "1"
  assert env["JAX_PLATFORMS"] == "cpu"
  assert env["XLA_FLAGS"].split() == ["--xla_foo=1", "--xla_force_host_platform_device_count=2"]
  assert env["HOME"] == "/h"


def test_resolve_command_runs_tokenlab_with_this_python():
  assert local.resolve_command(["tokenlab", "train", "--x"]) == [
      sys.executable, "-m", "tokenlab.cli", "train", "--x"]
  assert local.resolve_command(["echo", "hi"]) == ["echo", "hi"]


def test_run_local_prefixes_each_process_output(tmp_path):
  code = ("import os; print('id', os.environ['TOKENLAB_PROCESS_ID'], "
          "os.environ['TOKENLAB_NUM_PROCESSES'], os.environ['XLA_FLAGS'])")
  out = io.StringIO()
  status = local.run_local([sys.executable, "-c", code], 2, 3, log_dir=str(tmp_path),
                           out=out)
  text = out.getvalue()
  assert status == 0
  for p in (0, 1):   # the device-count flag set last, other XLA flags kept
    line = next(l for l in text.splitlines() if l.startswith(f"[p{p}] id {p} 2 "))
    assert line.split()[-1] == "--xla_force_host_platform_device_count=3", line
    assert line.count("--xla_force_host_platform_device_count") == 1, line
  assert (tmp_path / "process_1.log").read_text().startswith("id 1 2")


def test_run_local_stops_the_others_when_one_fails():
  # Process 1 fails at once; process 0 would sleep for a minute (like a process stuck in a
  # collective waiting for a dead peer) and must be stopped.
  code = ("import os, sys, time\n"
          "if os.environ['TOKENLAB_PROCESS_ID'] == '1':\n"
          "  print('boom', flush=True); sys.exit(3)\n"
          "time.sleep(60)\n")
  out = io.StringIO()
  t = time.monotonic()
  status = local.run_local([sys.executable, "-c", code], 2, 1, grace=2.0, out=out)
  assert status == 3
  assert time.monotonic() - t < 30
  assert "[p1] boom" in out.getvalue()
  assert "process 1 failed with exit status 3" in out.getvalue()


def test_local_script_requires_a_command():
  proc = subprocess.run([sys.executable, "launch/local.py", "--processes", "2"], cwd=REPO,
                        capture_output=True, text=True)
  assert proc.returncode != 0
  assert "give the command after `--`" in proc.stderr


# ----------------------------------------------------------------------------- TPU pod


@pytest.mark.parametrize("accel,chips,hosts,topology", [
    ("v5litepod-16", 16, 4, "4x4"), ("v5litepod-8", 8, 1, "2x4"), ("v4-32", 16, 4, "2x2x4"),
    ("v5p-128", 64, 16, "4x4x4"), ("v6e-256", 256, 64, "16x16")])
def test_parse_slice(accel, chips, hosts, topology):
  s = _tpu.parse_slice(accel)
  assert (s.chips, s.hosts, s.topology) == (chips, hosts, topology)


def test_parse_slice_rejects_unknown_types():
  with pytest.raises(SystemExit, match="v5litepod-16"):
    _tpu.parse_slice("v9-8")


def test_tpu_pod_dry_run_prints_every_step(capsys):
  assert tpu_pod.main(["--name", "lm", "--zone", "us-west4-a", "--accelerator-type",
                       "v5litepod-16", "--project", "proj", "--spot", "--delete", "--dry-run",
                       "--", *TRAIN]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  cmds = [shlex.split(line.split("  # ")[0]) for line in lines]
  phases = [line.rsplit("# ", 1)[1] for line in lines]
  assert phases == ["create", "copy", "copy", "copy", "install", "run"] + ["logs"] * 4 + [
      "delete"]
  create = cmds[0]
  assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "lm"]
  assert {"--accelerator-type=v5litepod-16", "--zone=us-west4-a", "--project=proj",
          "--spot", "--version=v2-alpha-tpuv5-lite"} <= set(create)
  run = cmds[5]
  assert run[4] == "ssh" and "--worker=all" in run
  remote = next(a for a in run if a.startswith("--command="))[len("--command="):]
  # The exact training command runs from the venv on every worker, output kept in a log.
  assert ("$HOME/tokenlab-venv/bin/tokenlab train --config experiments/transformer_lm.py:"
          "size=1b --workdir gs://bucket/runs/lm 2>&1 | tee ~/tokenlab_run.log") in remote
  assert [next(a for a in c if a.startswith("--worker=")) for c in cmds[6:10]] == [
      f"--worker={i}" for i in range(4)]
  assert [c[6] for c in cmds[6:10]] == [f"logs/tpu_pod/worker_{i}.log" for i in range(4)]
  assert cmds[-1][4:7] == ["delete", "lm", "--quiet"]


def test_tpu_pod_skip_create_and_clone(capsys):
  tpu_pod.main(["--name", "lm", "--zone", "z", "--accelerator-type", "v4-8", "--skip-create",
                "--repo", "https://example.com/tokenlab.git", "--dry-run", "--", *TRAIN])
  out = capsys.readouterr().out
  assert " create " not in out and " delete " not in out
  assert "git clone --depth 1 --branch main https://example.com/tokenlab.git" in out
  assert out.count("# logs") == 1  # v4-8: one host


def test_tpu_pod_real_run_stops_at_first_failure_but_collects_logs(monkeypatch, tmp_path):
  calls = []

  def fake_call(cmd):
    calls.append(cmd)
    return 1 if "--command=" in " ".join(cmd) and "tokenlab train" in " ".join(cmd) else 0
  monkeypatch.setattr(tpu_pod.subprocess, "call", fake_call)
  status = tpu_pod.main(["--name", "lm", "--zone", "z", "--accelerator-type", "v5litepod-16",
                         "--log-dir", str(tmp_path), "--skip-create", "--repo", "r", "--",
                         *TRAIN])
  assert status == 1
  verbs = [c[4] for c in calls]
  assert verbs == ["ssh", "ssh", "ssh"] + ["scp"] * 4


# ----------------------------------------------------------------------------- GKE


def test_gke_jobset_renders_a_valid_manifest(capsys):
  gke.main(["--name", "run1", "--tpu-type", "v6e-32", "--num-slices", "2", "--image", "img:1",
            "--", *TRAIN])
  doc = yaml.safe_load(capsys.readouterr().out)
  assert doc["kind"] == "JobSet" and doc["metadata"]["name"] == "run1"
  job = doc["spec"]["replicatedJobs"][0]
  assert job["replicas"] == 2
  assert job["template"]["spec"]["parallelism"] == 8  # 32 chips / 4 per host
  pod = job["template"]["spec"]["template"]["spec"]
  assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v6e-slice",
                                 "cloud.google.com/gke-tpu-topology": "4x8"}
  container = pod["containers"][0]
  assert container["image"] == "img:1"
  assert container["resources"]["limits"]["google.com/tpu"] == 4
  # Two slices: the data axis spans them over DCN, and libtpu's megascale env links them.
  assert container["args"][0].endswith(shlex.join(TRAIN + ["--config.mesh_dcn.data=2"]))
  env = {e["name"]: e for e in container["env"]}
  assert env["MEGASCALE_SLICE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == (
      "metadata.annotations['jobset.sigs.k8s.io/job-index']")
  assert {"MEGASCALE_COORDINATOR_ADDRESS", "MEGASCALE_NUM_SLICES", "MEGASCALE_PORT"} <= set(env)
  assert pod["terminationGracePeriodSeconds"] == 120
  # One slice: no DCN axis, no megascale env (the committed example).
  args, command = gke.parse_args(["--", *TRAIN])
  assert command == TRAIN and "MEGASCALE" not in gke.render_jobset(args, command)
  assert gke.multislice_command([*TRAIN, "--config.mesh_dcn.fsdp=2"], 2)[-1] == (
      "--config.mesh_dcn.fsdp=2")


def test_gke_committed_example_matches_the_renderer(tmp_path):
  args, command = gke.parse_args(["--", *gke.EXAMPLE_COMMAND])
  with open(gke.EXAMPLE_PATH) as f:
    assert f.read() == gke.render_jobset(args, command), (
        "launch/gke_jobset.yaml is stale: run python launch/gke.py --write-example")


def test_gke_xpk_command(capsys):
  gke.main(["--xpk", "--cluster", "c1", "--tpu-type", "v5p-64", "--name", "w", "--", *TRAIN])
  cmd = shlex.split(capsys.readouterr().out)
  assert cmd[:3] == ["xpk", "workload", "create"]
  assert {"--cluster=c1", "--workload=w", "--tpu-type=v5p-64", "--num-slices=1"} <= set(cmd)
  assert any(c.startswith("--command=") and c.endswith(shlex.join(TRAIN)) for c in cmd)


# ----------------------------------------------------------------------------- SLURM


def test_slurm_script_per_node(tmp_path):
  path = tmp_path / "job.sbatch"
  assert slurm.main(["--nodes", "4", "--gpus-per-node", "8", "--partition", "p", "--requeue",
                     "--venv", "/v", "--output", str(path), "--", *TRAIN]) == 0
  text = path.read_text()
  assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
  sbatch = [line for line in text.splitlines() if line.startswith("#SBATCH")]
  assert {"#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
          "#SBATCH --partition=p", "#SBATCH --requeue", "#SBATCH --signal=TERM@120"} <= set(sbatch)
  srun = [line for line in text.splitlines() if line.startswith("srun ")]
  assert srun == ["srun --kill-on-bad-exit=1 --gpus-per-task=8 --ntasks-per-node=1 "
                  + shlex.join(TRAIN)]
  assert "source /v/bin/activate" in text


def test_slurm_script_per_gpu(capsys):
  slurm.main(["--nodes", "2", "--gpus-per-node", "4", "--tasks-per-gpu", "--", *TRAIN])
  text = capsys.readouterr().out
  assert "#SBATCH --ntasks-per-node=4" in text
  assert "--gpus-per-task=1 --ntasks-per-node=4" in text
  assert "#SBATCH --requeue" not in text


def _python_setup_in(path_dirs, tmp_path):
  """Runs the worker's Python selection with only `path_dirs` on PATH; returns (rc, $PY, log)."""
  script = tpu_pod.python_setup(tpu_pod.requires_python(REPO)) + '; echo "PY=$PY"'
  env = {"PATH": os.pathsep.join(map(str, path_dirs)), "HOME": str(tmp_path)}
  out = subprocess.run(["/bin/bash", "-c", script], env=env, capture_output=True, text=True,
                       timeout=60)
  return out.returncode, out.stdout, out.stderr


def test_tpu_pod_install_picks_a_python_the_project_supports(tmp_path):
  import shutil
  assert tpu_pod.requires_python(REPO) == (3, 11)
  # This machine's interpreter (>= 3.11) is chosen as it is.
  bindir = tmp_path / "bin"
  bindir.mkdir()
  os.symlink(sys.executable, bindir / "python3")
  for tool in ("bash", "true"):
    os.symlink(shutil.which(tool), bindir / tool)
  rc, out, _ = _python_setup_in([bindir], tmp_path)
  assert rc == 0 and "PY=python3" in out
  # A TPU VM image with Python 3.10 only: python3.11 is installed with apt (sudo recorded).
  old = tmp_path / "old"
  old.mkdir()
  (old / "python3").write_text("#!/bin/bash\nexit 1\n")          # 'version < 3.11' -> exit 1
  (old / "sudo").write_text(f"#!/bin/bash\necho \"$@\" >> {tmp_path}/sudo.log\n")
  for f in ("python3", "sudo"):
    os.chmod(old / f, 0o755)
  rc, out, _ = _python_setup_in([old], tmp_path)   # bash builtins do the rest
  log = (tmp_path / "sudo.log").read_text()
  assert "add-apt-repository -y ppa:deadsnakes/ppa" in log
  assert "apt-get install -y -qq python3.11 python3.11-venv" in log
  assert rc == 0 and "PY=python3.11" in out
  # The rendered install step uses it.
  cmds = tpu_pod.build_commands(tpu_pod.parse_args(
      ["--name", "x", "--zone", "z", "--accelerator-type", "v4-8", "--", *TRAIN])[0], TRAIN)
  install = next(c for phase, c in cmds if phase == "install")[-2]
  assert "$PY -m venv $HOME/tokenlab-venv" in install and "deadsnakes" in install
