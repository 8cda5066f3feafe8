"""Process settings for XLA's CPU backend (fast and deadlock-free); the CLI applies them
before jax starts.

Why the malloc settings: an XLA:CPU executable gets one temporary buffer per call, as large
as its biggest live set (180 MB for the demo step at batch 256). It is allocated from a
thread-pool thread, so glibc serves it from a per-thread arena; an arena heap holds at most
64 MB, so glibc falls back to `mmap` and `munmap`s it again on free. Every step then
page-faults all 180 MB afresh: 44k faults and ~120 ms of kernel time per demo step (profiled
with `getrusage` and `strace`). With one arena, no mmap'd chunks and a high trim threshold,
the buffer is reused from the heap and stays mapped. On hosts with accelerators the temporary
buffers live on the device and the host allocator serves the input pipeline, whose many
threads are better off with many arenas, so `auto` leaves those hosts alone.

Why huge pages: that buffer is the step's whole working set, and on 4 KiB pages 180 MB is
46k TLB entries, far more than a core's TLB holds. Where the kernel gives transparent huge
pages only to memory that asks for them (THP mode `madvise`, the common default), glibc
>= 2.35 asks for its heap when `GLIBC_TUNABLES` holds `glibc.malloc.hugetlb=1`, which glibc
reads only when the process starts: so the CLI restarts itself once with it
(`restart_with_huge_pages`). The demo step on 2 devices: median 94.4 ms against 105.8 ms
on 4 KiB pages (five interleaved pairs of runs; docs/benchmarks.md). A
`glibc.malloc.hugetlb` setting of the user's own (e.g. `=0`) is left alone.

Why the thread pool: XLA:CPU runs all simulated devices' work on one pool of
max(cores, devices) threads, and a collective holds its thread until every participant
arrives. The executor runs independent thunks concurrently, so one device can hold two
threads in collectives (seen with the scanned step on a data=2, fsdp=2, model=2 mesh: each
device waiting at a different op id); then the last device gets no thread and the rendezvous
never completes: 5 of 10 runs aborted with 8 threads, 0 of 10 with 16.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import re
import sys

from contrastive_jax.errors import ConfigError  # imports nothing: jax stays unloaded

ENV_MALLOC = "CONTRASTIVE_JAX_CPU_MALLOC"  # auto (default) | on | off
# glibc mallopt() parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_TRIM_THRESHOLD = 1 << 30  # give freed heap memory back to the OS only above 1 GiB
_applied = False
ENV_TUNABLES = "GLIBC_TUNABLES"
_HUGETLB = "glibc.malloc.hugetlb"
_THP_MODE_PATH = "/sys/kernel/mm/transparent_hugepage/enabled"
ENV_POOL = "PJRT_NPROC"  # read by XLA when the CPU client starts: its thread-pool size
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                        "jax_rocm7_plugin", "libtpu")


def accelerator_plugin_installed() -> bool:
    """True when a GPU/TPU plugin for jax is importable (jax would then not run on the CPU)."""
    return any(importlib.util.find_spec(name) is not None for name in _ACCELERATOR_PLUGINS)


def wants_cpu_malloc(environ: dict[str, str] | None = None) -> bool:
    """Whether to apply `keep_large_buffers_mapped`, from CONTRASTIVE_JAX_CPU_MALLOC."""
    environ = os.environ if environ is None else environ
    mode = environ.get(ENV_MALLOC, "auto").strip().lower()
    if mode not in ("auto", "on", "off"):
        raise ConfigError(f"{ENV_MALLOC}={mode!r}: expected auto, on or off")
    if mode != "auto":
        return mode == "on"
    platforms = environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not accelerator_plugin_installed()


def keep_large_buffers_mapped() -> bool:
    """One malloc arena, no mmap'd chunks, 1 GiB trim threshold (see the module docstring).

    Call it before any thread allocates (before jax or TensorFlow start): threads that
    already own an arena keep it. Returns False where glibc's mallopt is not available.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    global _applied
    _applied = all(mallopt(param, value) == 1 for param, value in (
        (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)))
    return _applied


def thp_mode(path: str = _THP_MODE_PATH) -> str | None:
    """The kernel's transparent huge page mode: "always", "madvise", "never"; None if unknown."""
    try:
        with open(path, encoding="ascii") as f:
            found = re.search(r"\[(\w+)\]", f.read())
    except OSError:
        return None
    return found.group(1) if found else None


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the C library when it is glibc, else None."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, OSError, TypeError, ValueError):
        return None


def huge_page_tunables(environ: dict[str, str], thp: str | None,
                       glibc: tuple[int, int] | None) -> str | None:
    """The GLIBC_TUNABLES value to restart with so that malloc asks for huge pages for its
    heap; None where that needs no restart (THP "always": every large mapping gets them; the
    setting already there, ours or the user's) or cannot help (THP off, glibc < 2.35)."""
    if thp != "madvise" or glibc is None or glibc < (2, 35):
        return None
    current = environ.get(ENV_TUNABLES, "")
    if _HUGETLB in current:
        return None
    return f"{current}:{_HUGETLB}=1" if current else f"{_HUGETLB}=1"


def restart_with_huge_pages(cli_file: str) -> None:
    """Replaces this process with the same command line, GLIBC_TUNABLES asking for huge
    pages (module docstring), when the malloc tuning is wanted and that helps; else returns.
    Only for the CLI's own process (`contrastive-jax ...` or `python -m contrastive_jax.cli`,
    whose module is `cli_file`), first thing: nothing has started that a restart would
    repeat (jax, TensorFlow, files, threads). The PID stays, so signals still reach it."""
    program = os.path.realpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if (os.path.basename(program) != "contrastive-jax" and program != os.path.realpath(cli_file)
            or "jax" in sys.modules or "tensorflow" in sys.modules or not wants_cpu_malloc()):
        return
    tunables = huge_page_tunables(dict(os.environ), thp_mode(), glibc_version())
    if tunables is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, {**os.environ, ENV_TUNABLES: tunables})


def heap_huge_pages(environ: dict[str, str] | None = None) -> bool:
    """Whether this process's malloc heap gets transparent huge pages (benchmarks report it)."""
    environ = os.environ if environ is None else environ
    thp, glibc = thp_mode(), glibc_version()
    if thp == "always":
        return True
    return (thp == "madvise" and glibc is not None and glibc >= (2, 35)
            and f"{_HUGETLB}=1" in environ.get(ENV_TUNABLES, ""))


def tune_before_jax() -> None:
    """In a fresh process only (not once jax or TensorFlow have started, e.g. in a test that
    calls the CLI's main(): their threads own arenas, the CPU client its pool):
    `keep_large_buffers_mapped` when wanted and `widen_cpu_thread_pool` for the devices the
    environment asks for."""
    if "jax" in sys.modules or "tensorflow" in sys.modules:
        return
    if wants_cpu_malloc():
        keep_large_buffers_mapped()
    widen_cpu_thread_pool(cpu_devices_requested())


def malloc_tuned() -> bool:
    """Whether `keep_large_buffers_mapped` succeeded in this process (benchmarks report it)."""
    return _applied


def cpu_devices_requested(environ: dict[str, str] | None = None) -> int:
    """The number of jax CPU devices the environment asks for: JAX_NUM_CPU_DEVICES, else
    XLA_FLAGS' --xla_force_host_platform_device_count, else 1."""
    environ = os.environ if environ is None else environ
    if environ.get("JAX_NUM_CPU_DEVICES", "").strip().isdigit():
        return int(environ["JAX_NUM_CPU_DEVICES"])
    found = re.findall(r"--xla_force_host_platform_device_count=(\d+)",
                       environ.get("XLA_FLAGS", ""))
    return int(found[-1]) if found else 1


def widen_cpu_thread_pool(devices: int, environ: dict[str, str] | None = None) -> int | None:
    """Sizes XLA's CPU thread pool at 2 threads per device (at least one per core), so a
    device can hold two collectives at once without starving another (module docstring).
    Before jax's CPU client starts; a PJRT_NPROC the user set is left alone. Returns the
    size set, or None."""
    environ = os.environ if environ is None else environ
    if devices <= 1 or ENV_POOL in environ:
        return None
    threads = max(os.cpu_count() or 1, 2 * devices)
    environ[ENV_POOL] = str(threads)
    return threads


def set_cpu_devices(count: int) -> None:
    """Splits the host into `count` jax CPU devices (e.g. one per core), so a data-parallel
    mesh runs each device's element-wise work on its own core. Only before jax's backends
    start; the error says so otherwise."""
    if count < 1:
        raise ConfigError(f"--cpu-devices must be >= 1, got {count}")
    import jax
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise RuntimeError("set_cpu_devices must run before jax's backends start")
    widen_cpu_thread_pool(count)
    jax.config.update("jax_num_cpu_devices", count)
