"""What every subcommand shares: `--config.a.b=v` overrides and JSON output."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence


def split_overrides(extra: Sequence[str]) -> list[str]:
    """Collects `--config.a.b=v` (or `--config.a.b v`) into `a.b=v` strings."""
    overrides, items = [], list(extra)
    while items:
        item = items.pop(0)
        if not item.startswith("--config."):
            raise SystemExit(f"error: unrecognised argument {item!r}")
        key = item[len("--config."):]
        if "=" not in key:
            if not items:
                raise SystemExit(f"error: {item} needs a value")
            key = f"{key}={items.pop(0)}"
        overrides.append(key)
    return overrides

def simulate_cpu_devices(count: int = 8) -> None:
    """Lets multi-device benchmarks run on a CPU: XLA must see the flag before jax starts.
    Harmless with accelerators: jax.devices() then lists those, not the host devices."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "jax" not in sys.modules and "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}"

def quiet_libtpu_without_tpu() -> None:
    """With libtpu installed (the `tpu` extra, for `plan`) on a host without TPUs, jax's
    start-up tries the TPU backend and libtpu prints warnings about the missing TPU metadata.
    Naming this host alone and a one-chip type quiets them; a TPU host (/dev/accel*,
    /dev/vfio) is left as it is."""
    import glob
    import importlib.util

    if (importlib.util.find_spec("libtpu") is None or glob.glob("/dev/accel*")
            or glob.glob("/dev/vfio/[0-9]*")):
        return
    for key, value in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_WORKER_HOSTNAMES", "localhost"),
                       ("TPU_ACCELERATOR_TYPE", "v5litepod-1")):
        os.environ.setdefault(key, value)


def print_json(obj: dict) -> None:
    print(json.dumps(obj), flush=True)

