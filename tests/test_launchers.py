"""The pod launchers' dry-run modes print exactly what they would run."""

import shlex
import subprocess

import pytest
import yaml

TRAIN = ["--config", "configs/demo_siglip.py:steps=3", "--workdir", "gs://bucket/run 1"]


def run(*args):
    return subprocess.run(["bash", *args], capture_output=True, text=True, timeout=300)


def test_tpu_pod_launcher_runs_train_on_all_workers():
    result = run("tools/launch_tpu_pod.sh", "--tpu", "v5p-64", "--zone", "us-east5-a",
                 "--dry-run", "--", *TRAIN)
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout)
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "v5p-64"]
    assert "--worker=all" in argv
    remote = argv[argv.index("--command") + 1]
    assert shlex.split(remote.split("&&")[-1]) == ["contrastive-jax", "train", *TRAIN]


def test_tpu_pod_launcher_needs_its_flags():
    result = run("tools/launch_tpu_pod.sh", "--dry-run", "--", *TRAIN)
    assert result.returncode == 2 and "--tpu and --zone are required" in result.stderr


def test_slurm_script_srun_command():
    result = run("tools/slurm_train.sbatch", "--dry-run", *TRAIN)
    assert result.returncode == 0, result.stderr
    last = shlex.split(result.stdout.splitlines()[-1])
    assert last == ["srun", "--kill-on-bad-exit=1", "contrastive-jax", "train", *TRAIN]


def test_kubernetes_jobset_manifest():
    result = run("tools/launch_k8s_jobset.sh", "--name", "run1", "--image", "img:1", "--hosts",
                 "4", "--gpus-per-host", "8", "--dry-run", "--", *TRAIN)
    assert result.returncode == 0, result.stderr
    jobset = yaml.safe_load(result.stdout)
    assert jobset["kind"] == "JobSet"
    job = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert job["parallelism"] == job["completions"] == 4
    assert job["completionMode"] == "Indexed"
    container = job["template"]["spec"]["containers"][0]
    assert container["args"][:4] == TRAIN
    coordinator = "--config.distributed.coordinator_address=run1-workers-0-0.run1:8476"
    assert coordinator in container["args"]
    assert "--config.distributed.num_processes=4" in container["args"]
    assert "process_id=$JOB_COMPLETION_INDEX" in container["command"][2]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8


def test_tpu_pod_launcher_stops_when_the_plan_does_not_fit():
    """The launcher compiles the step for the slice (`contrastive-jax plan`, libtpu) before it
    creates anything; a batch no v5e chip holds stops it with plan's one line and exit 2."""
    pytest.importorskip("libtpu", reason="libtpu is not installed (pip install -e .[tpu])")
    result = run("tools/launch_tpu_pod.sh", "--tpu", "t1", "--zone", "z", "--type",
                 "v5litepod-4", "--plan-args", "--no-suggest", "--", *TRAIN,
                 "--config.train.batch_size=4194304")
    assert result.returncode == 2, result.stderr
    assert "error: does not fit" in result.stderr and "TPU v5e" in result.stderr
    assert "nothing was launched" in result.stderr.splitlines()[-1]
    assert "gcloud compute tpus tpu-vm ssh" not in result.stdout


def test_launchers_skip_the_plan_when_asked():
    result = run("tools/launch_tpu_pod.sh", "--tpu", "t1", "--zone", "z", "--type", "v4-8",
                 "--skip-plan", "--dry-run", "--", *TRAIN)
    assert result.returncode == 0 and "planning" not in result.stderr
    assert shlex.split(result.stdout)[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]
    result = run("tools/launch_k8s_jobset.sh", "--name", "r", "--image", "i", "--topology",
                 "v5p-64", "--skip-plan", "--dry-run", "--", *TRAIN)
    assert result.returncode == 0 and "planning" not in result.stderr
    assert yaml.safe_load(result.stdout)["kind"] == "JobSet"
