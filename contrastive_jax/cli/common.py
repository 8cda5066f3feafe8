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

def print_json(obj: dict) -> None:
    print(json.dumps(obj), flush=True)

