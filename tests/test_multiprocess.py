"""2 processes x 4 CPU devices (jax.distributed on localhost, gloo) train like 1 x 8 devices."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from multiprocess_worker import EVAL_ROWS, run, worker_config
from xla_flags import CHEAP_COMPILE

import contrastive_jax

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(contrastive_jax.__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start(tmp_path: pathlib.Path, num_processes: int = 2,
          devices_per_process: int = 4) -> list[subprocess.Popen]:
    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process} "
                        + CHEAP_COMPILE,
           # This checkout's package, not whichever one is installed.
           "PYTHONPATH": os.pathsep.join([ROOT, TESTS])}
    procs = []
    for i in range(num_processes):
        # Output to files, not pipes: nobody reads them while the reference runs.
        with open(tmp_path / f"log{i}.txt", "w") as log:
            procs.append(subprocess.Popen(
                [sys.executable, os.path.join(TESTS, "multiprocess_worker.py"), str(port),
                 str(num_processes), str(i), str(tmp_path / f"result{i}.json")],
                env=env, stdout=log, stderr=subprocess.STDOUT, text=True))
    return procs


def results(tmp_path: pathlib.Path, procs: list[subprocess.Popen]) -> list[dict]:
    try:
        for i, proc in enumerate(procs):
            proc.wait(timeout=240)
            assert proc.returncode == 0, (tmp_path / f"log{i}.txt").read_text()[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return [json.loads((tmp_path / f"result{i}.json").read_text()) for i in range(len(procs))]


def test_two_processes_match_one_process_of_eight_devices(tmp_path):
    procs = start(tmp_path)
    try:
        # The 1 x 8 reference trains while the two processes start and train.
        reference = run(worker_config(), devices=jax.devices()[:8])
    except BaseException:
        for proc in procs:
            proc.kill()
        raise
    launched = results(tmp_path, procs)
    assert reference["process_count"] == 1
    for result in launched:
        assert result["process_count"] == 2 and result["local_devices"] == 4
        np.testing.assert_allclose(result["losses"], reference["losses"], rtol=1e-5)
        # Each process fed only its half of every eval batch; every real example counted once.
        assert result["zeroshot"]["count"] == reference["zeroshot"]["count"] == EVAL_ROWS
        np.testing.assert_allclose(result["zeroshot"]["top1"], reference["zeroshot"]["top1"])
        np.testing.assert_allclose(result["zeroshot"]["top5"], reference["zeroshot"]["top5"])
        # Counters summed over the processes, exactly, whatever order each process built them.
        assert result["summed_counters"] == {"big": 2**41 + 1, "small": 1 + 2}
        # Each process's int64 row, in process order (checkpointed stream positions).
        assert result["gathered"] == [[2**41, 0], [2**41 + 1, 1]]
    assert reference["losses"][-1] < reference["losses"][0]


def test_initialize_reads_explicit_keys_and_stays_off_without_a_cluster(monkeypatch):
    from contrastive_jax.config import validate
    from contrastive_jax.errors import ConfigError
    from contrastive_jax.parallel import distributed

    for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    config = worker_config()
    config.distributed.enabled = "auto"
    assert distributed.detected_cluster() is None
    assert not distributed.initialize(config) and not calls  # a plain single-process run
    config.distributed.num_processes = 1  # without a coordinator, still not a cluster
    assert not distributed.initialize(config) and not calls
    config.distributed.coordinator_address = "host0:1234"
    config.distributed.num_processes, config.distributed.process_id = 4, 3
    assert distributed.initialize(config)
    assert calls == [{"coordinator_address": "host0:1234", "num_processes": 4, "process_id": 3}]
    config.distributed.enabled = "off"
    assert not distributed.initialize(config) and len(calls) == 1
    config.distributed.enabled = "yes"
    with pytest.raises(ConfigError, match="distributed.enabled"):
        validate(config)


def test_a_workdir_config_does_not_carry_the_launch_of_its_job(tmp_path):
    from contrastive_jax.config import config_to_json
    from contrastive_jax.config.workdir import load_workdir_config

    config = worker_config(1234, 2, 1)  # as process 1 of a 2-process job would have it
    (tmp_path / "config.json").write_text(config_to_json(config))
    loaded = load_workdir_config(str(tmp_path))
    assert loaded.distributed.enabled == "auto" and loaded.distributed.process_id == -1
    assert loaded.mesh.fsdp == 2 and loaded.train.steps == config.train.steps
    loaded = load_workdir_config(str(tmp_path), ["distributed.process_id=1"])
    assert loaded.distributed.process_id == 1
