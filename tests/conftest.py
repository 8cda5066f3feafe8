"""Test set-up: 8 simulated CPU devices, set before jax is imported anywhere."""

import atexit
import fcntl
import os
import shutil
import tempfile

from xla_flags import CHEAP_COMPILE

from contrastive_jax import cpu_host  # imports no jax: the environment below must come first

# 8 devices share 2 cores here, so a device thread can wait a while for a core; XLA's CPU
# collectives abort the whole process when a rendezvous takes over 40 s. The limit is raised
# to 3 minutes: past any wait for a core, short enough that a real deadlock fails fast.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    " --xla_cpu_collective_call_terminate_timeout_seconds=180"
    " --xla_cpu_collective_timeout_seconds=180 " + CHEAP_COMPILE
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# 16 pool threads for the 8 devices: one device may hold two collectives at once.
cpu_host.widen_cpu_thread_pool(8)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One XLA compilation cache for the whole run, shared by the xdist workers (they inherit the
# controller's environment) and the CLI subprocesses the tests start: many tests compile the
# same tiny model's programs, and a program compiled once is then loaded, not compiled
# again. A fresh directory per run, removed at exit: every run starts as cold as CI's.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _xla_cache = tempfile.mkdtemp(prefix="contrastive_jax_tests_xla_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _xla_cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    atexit.register(shutil.rmtree, _xla_cache, ignore_errors=True)


import pytest  # noqa: E402


def _built_once(tmp_path_factory, name: str, build) -> str:
    """The directory `name`, filled by `build(path)` once for the whole run: the xdist
    workers share one copy (the first to ask builds it; the other waits on a file lock).
    For read-only fixtures only."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's temporary root, common to its workers
    path, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            build(str(path))
            done.touch()
    return str(path)


@pytest.fixture(scope="session")
def fake_fashion_mnist_source(tmp_path_factory) -> str:
    """Small valid idx.gz files shaped like Fashion-MNIST (200 train, 50 test images)."""
    from contrastive_jax.datasets import fashion_mnist_captions as fmc

    return _built_once(tmp_path_factory, "fake_fmnist", fmc.write_fake_source)


@pytest.fixture(scope="session")
def fake_data_dir(tmp_path_factory, fake_fashion_mnist_source) -> str:
    """A TFDS data_dir with fashion_mnist_captions built from the fake idx files."""
    from contrastive_jax.datasets import fashion_mnist_captions as fmc

    return _built_once(tmp_path_factory, "tfds", lambda path: fmc.build_fashion_mnist_captions(
        path, source=fake_fashion_mnist_source))


@pytest.fixture(scope="session")
def trained_workdir(fake_data_dir, tmp_path_factory) -> str:
    """A tiny model trained 6 steps (checkpoints at 3 and 6), shared by export and eval tests,
    which only read it."""
    from helpers import fashion_tasks, tiny_config

    from contrastive_jax.train import loop

    config = tiny_config(
        data={"data_dir": fake_data_dir, "tokenizer": {"vocab_size": 64}, "shuffle_buffer": 64},
        train={"steps": 6, "checkpoint_every": 3},
        evals={"tasks": fashion_tasks()},
    )
    return _built_once(tmp_path_factory, "trained_run", lambda path: loop.train(config, path))


@pytest.fixture(scope="session")
def gcs():
    """A GCS JSON API on loopback (tests/gcs_emulator.py) with bucket `cj-test` and every
    client of this process and its subprocesses pointed at it; stopped at the end."""
    from gcs_emulator import GcsEmulator, point_clients_at, restore_env

    emulator = GcsEmulator().start()
    previous = point_clients_at(emulator)
    try:
        emulator.create_bucket("cj-test")
        yield emulator
    finally:
        restore_env(previous)
        emulator.stop()


def pytest_sessionfinish(session) -> None:
    """Frees jax's compiled programs while the run is still the worker's own: under xdist,
    execnet sends SIGINT to a worker still busy 5 s after it reported the session finished,
    and collecting a whole session's executables at interpreter exit can take that long."""
    import gc

    import jax

    jax.clear_caches()
    gc.collect()


# The heaviest files first (measured with --durations on 2 cores, 2026-12-06): xdist's
# loadfile hands out files in collection order, so a heavy file collected last would run
# alone at the end while the other worker idles. Longest first keeps both busy.
HEAVIEST_FIRST = (
    "test_hf_parity.py", "test_plan.py", "test_preemption.py", "test_elastic_resume.py",
    "test_data_order.py", "test_zerovl.py", "test_demo_chain.py", "test_cit_and_offline.py",
    "test_naflex_train.py",
    "test_lit_init_cache.py", "test_resume.py", "test_one_tower.py", "test_scan_layers.py",
    "test_gcs_run.py", "test_nonfinite.py", "test_checkpoint_integrity.py", "test_siglip2.py",
    "test_resume_read_size.py", "test_train_step.py", "test_data_sources.py", "test_export.py",
    "test_eval_report.py", "test_flip.py", "test_cpu_host.py", "test_multiprocess.py",
    "test_bench.py", "test_grad_cache.py", "test_big_vision_import.py", "test_errors.py",
    "test_sharding.py", "test_launchers.py", "test_loss_family.py", "test_cappa.py",
    "test_catlip.py", "test_models.py", "test_naflex_hf.py", "test_naflex.py",
    "test_fuzz_inputs.py", "test_gcs_read_errors.py", "test_memory.py", "test_losses.py",
    "test_lit_lock.py", "test_data_pipeline.py", "test_gcs_tfds.py", "test_cli.py",
)


def pytest_collection_modifyitems(items) -> None:
    rank = {name: i for i, name in enumerate(HEAVIEST_FIRST)}
    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(item.path.name, len(rank)), order[id(item)]))
