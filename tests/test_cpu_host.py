"""CPU process settings: the malloc tuning keeps a large buffer mapped across frees (the cause
of XLA:CPU's per-step page faults), its heap on transparent huge pages, when each applies,
and `bench step --cpu-devices`."""

import json
import os
import subprocess
import sys

import pytest
from xla_flags import CHEAP_COMPILE

from contrastive_jax import cpu_host

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A thread (like XLA's thread pool) allocates, touches and frees 192 MiB three times; the
# page faults of the last two rounds are printed. Without the tuning glibc serves each
# round with a fresh mmap, so every page faults again.
_FAULTS_CHILD = """
import ctypes, resource, sys, threading
from contrastive_jax import cpu_host
if sys.argv[1] == "on":
    assert cpu_host.keep_large_buffers_mapped() and cpu_host.malloc_tuned()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 192 << 20
faults = []
def rounds():
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        ptr = libc.malloc(size)
        ctypes.memset(ptr, 1, size)
        libc.free(ptr)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=rounds)
thread.start()
thread.join()
print(sum(faults[1:]))
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _FAULTS_CHILD, mode], capture_output=True,
                         text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tuned_malloc_reuses_a_large_buffer_instead_of_faulting_it_in_again():
    pages = 2 * (192 << 20) // 4096
    assert _faults("off") > pages // 2  # every 4 KiB page faults again (fewer with THP)
    assert _faults("on") < pages // 50


# The tuned heap serves 64 MiB, touched; prints how much of this process is on huge pages.
_HUGE_PAGES_CHILD = """
import ctypes
from contrastive_jax import cpu_host
assert cpu_host.keep_large_buffers_mapped()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
size = 64 << 20
ctypes.memset(libc.malloc(size), 1, size)
with open("/proc/self/smaps_rollup") as f:
    print([int(line.split()[1]) for line in f if line.startswith("AnonHugePages:")][0])
"""
MADVISE_THP = cpu_host.thp_mode() == "madvise" and (cpu_host.glibc_version() or (0,)) >= (2, 35)


def _huge_page_kib(tunables: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run([sys.executable, "-c", _HUGE_PAGES_CHILD], env=env,
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not MADVISE_THP, reason="needs THP mode madvise and glibc >= 2.35")
def test_the_hugetlb_tunable_puts_the_tuned_heap_on_huge_pages():
    assert _huge_page_kib("") < 4096  # THP madvise: nothing asked, 4 KiB pages
    assert _huge_page_kib("glibc.malloc.hugetlb=1") >= 48 << 10  # most of the 64 MiB


def test_when_the_process_restarts_for_huge_pages(tmp_path):
    new = (2, 36)
    assert cpu_host.huge_page_tunables({}, "madvise", new) == "glibc.malloc.hugetlb=1"
    assert (cpu_host.huge_page_tunables({"GLIBC_TUNABLES": "glibc.malloc.check=0"},
                                        "madvise", new)
            == "glibc.malloc.check=0:glibc.malloc.hugetlb=1")  # the user's tunables kept
    # No restart: set already (after the restart, or the user's own choice, e.g. =0), every
    # large mapping gets huge pages anyway, THP off, no glibc, a glibc without the tunable.
    for environ, thp, glibc in (({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "madvise", new),
                                ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise", new),
                                ({}, "always", new), ({}, "never", new), ({}, None, new),
                                ({}, "madvise", None), ({}, "madvise", (2, 34))):
        assert cpu_host.huge_page_tunables(environ, thp, glibc) is None, (environ, thp, glibc)
    mode = tmp_path / "enabled"
    mode.write_text("always [madvise] never\n")
    assert cpu_host.thp_mode(str(mode)) == "madvise"
    assert cpu_host.thp_mode(str(tmp_path / "missing")) is None
    assert cpu_host.heap_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}) == (
        MADVISE_THP or cpu_host.thp_mode() == "always")


def test_when_the_malloc_tuning_applies():
    assert cpu_host.wants_cpu_malloc({"CONTRASTIVE_JAX_CPU_MALLOC": "on",
                                      "JAX_PLATFORMS": "cuda"})
    assert not cpu_host.wants_cpu_malloc({"CONTRASTIVE_JAX_CPU_MALLOC": "off"})
    assert cpu_host.wants_cpu_malloc({"JAX_PLATFORMS": "cpu"})
    assert not cpu_host.wants_cpu_malloc({"JAX_PLATFORMS": "tpu,cpu"})
    assert cpu_host.wants_cpu_malloc({}) == (not cpu_host.accelerator_plugin_installed())
    with pytest.raises(ValueError, match="CONTRASTIVE_JAX_CPU_MALLOC='yes'"):
        cpu_host.wants_cpu_malloc({"CONTRASTIVE_JAX_CPU_MALLOC": "yes"})


def test_devices_requested_and_the_pool_widened_for_them():
    assert cpu_host.cpu_devices_requested({}) == 1
    assert cpu_host.cpu_devices_requested({"XLA_FLAGS": "--xla_force_host_platform_device_count=4"
                                           " --xla_cpu_enable_fast_math=false"}) == 4
    assert cpu_host.cpu_devices_requested({"JAX_NUM_CPU_DEVICES": "6", "XLA_FLAGS": ""}) == 6
    environ = {}
    assert cpu_host.widen_cpu_thread_pool(1, environ) is None and environ == {}
    assert cpu_host.widen_cpu_thread_pool(8, environ) == max(os.cpu_count(), 16)
    assert environ == {"PJRT_NPROC": str(max(os.cpu_count(), 16))}
    assert cpu_host.widen_cpu_thread_pool(8, {"PJRT_NPROC": "3"}) is None  # the user's choice


def test_this_test_process_runs_xla_on_two_pool_threads_per_device():
    """conftest widened the pool before jax started: count XLA's threads, don't assume them."""
    import jax

    jax.devices()
    names = []
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/comm") as f:
            names.append(f.read().strip())
    assert sum("XLAEigen" in name for name in names) >= 2 * jax.device_count() == 16


def test_cpu_devices_after_jax_started_is_refused():
    import jax

    jax.devices()
    with pytest.raises(RuntimeError, match="before jax's backends start"):
        cpu_host.set_cpu_devices(2)


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    # No device count in XLA_FLAGS (--cpu-devices sets it); the tests' cheap compile.
    env = {**{k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"},
           "JAX_PLATFORMS": "cpu", "XLA_FLAGS": CHEAP_COMPILE, **env}
    return subprocess.run([sys.executable, "-m", "contrastive_jax.cli", *args], env=env,
                          cwd=ROOT, capture_output=True, text=True)


def test_bench_step_with_one_device_per_core_and_tuned_malloc():
    # The demo config with a one-layer, 32-wide model: what is tested is the process's
    # devices and malloc, not the model's size.
    tiny = [f"--config.model.{tower}.{key}={value}" for tower in ("image", "text")
            for key, value in (("depth", 1), ("width", 32), ("mlp_dim", 64), ("num_heads", 2))]
    out = _cli("bench", "step", "--config", "configs/demo_siglip.py", "--steps", "2",
               "--cpu-devices", "2", "--matmul-size", "256", "--config.train.batch_size=16",
               "--config.model.embed_dim=16", *tiny, CONTRASTIVE_JAX_CPU_MALLOC="on")
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["devices"] == 2 and row["cpu_malloc_tuned"] is True and row["mfu"] > 0
    # The CLI restarted itself with the hugetlb tunable (this environment has none).
    assert row["cpu_heap_huge_pages"] is (MADVISE_THP or cpu_host.thp_mode() == "always")


def test_a_bad_malloc_setting_is_one_line():
    out = _cli("bench", "step", "--config", "configs/demo_siglip.py",
               CONTRASTIVE_JAX_CPU_MALLOC="maybe")
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: CONTRASTIVE_JAX_CPU_MALLOC='maybe': expected auto, "
                                  "on or off")
