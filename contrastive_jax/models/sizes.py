"""Named transformer sizes ("mu", "Ti", "S", ..., "B/16") and their resolution from configs.

The table matches big_vision's `vit.decode_variant` (Table 2 of arXiv:2106.04560, plus the
tiny "mu" used for smoke tests and So400m from arXiv:2305.13035), so checkpoints and recipe
names carry over unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from contrastive_jax.errors import ConfigError


class Size(NamedTuple):
    width: int
    depth: int
    mlp_dim: int
    num_heads: int


SIZES: dict[str, Size] = {
    "mu": Size(32, 1, 128, 2),
    "Ti": Size(192, 12, 768, 3),
    "S": Size(384, 12, 1536, 6),
    "M": Size(512, 12, 2048, 8),
    "B": Size(768, 12, 3072, 12),
    "L": Size(1024, 24, 4096, 16),
    "So400m": Size(1152, 27, 4304, 16),
    "H": Size(1280, 32, 5120, 16),
    "g": Size(1408, 40, 6144, 16),
    "G": Size(1664, 48, 8192, 16),
    "e": Size(1792, 56, 15360, 16),
}

SIZE_FIELDS = Size._fields


def decode_variant(variant: str | None, key: str | None = None) -> dict[str, int]:
    """"B/16" -> {width, depth, mlp_dim, num_heads, patch_size}; "B" omits patch_size.

    A bad name is a ConfigError, naming the config key `key` it came from when given.
    """
    if variant is None:
        return {}
    where = f"config key {key!r}: " if key else ""
    name, sep, patch = str(variant).partition("/")
    if name not in SIZES:
        raise ConfigError(f"{where}unknown model variant {variant!r}; known sizes: "
                          f"{list(SIZES)}")
    out: dict[str, int] = SIZES[name]._asdict()
    if sep:
        if not patch.isdigit() or int(patch) <= 0:
            raise ConfigError(f"{where}bad patch size in variant {variant!r}; expected e.g. "
                              "'B/16'")
        out["patch_size"] = int(patch)
    return out


def resolve_size(cfg: Mapping[str, Any], *, tower: str, with_patch: bool) -> dict[str, int]:
    """Named size from `cfg["variant"]`, overridden by any explicit (non-None) field.

    Returns width/depth/mlp_dim/num_heads (and patch_size if `with_patch`); a ConfigError
    names the key (`model.<tower>.*`) of a value missing from both the variant and cfg, or bad.
    """
    fields = SIZE_FIELDS + (("patch_size",) if with_patch else ())
    group = f"model.{tower}"
    out = decode_variant(cfg.get("variant"), key=f"{group}.variant")
    if "patch_size" in out and not with_patch:
        raise ConfigError(f"config key '{group}.variant': variant {cfg.get('variant')!r} has a "
                          "patch size, which only image towers take")
    for key in fields:
        if cfg.get(key) is not None:
            out[key] = int(cfg[key])
    missing = [f"{group}.{k}" for k in fields if k not in out]
    if missing:
        raise ConfigError(f"config keys {missing} not set; give '{group}.variant' (e.g. "
                          "'B/16') or set them explicitly")
    bad = [k for k in fields if out[k] <= 0]
    if bad:
        raise ConfigError(f"config key '{group}.{bad[0]}' must be positive, got {out[bad[0]]}")
    if out["width"] % out["num_heads"]:  # every attention layer of the tower splits width
        raise ConfigError(f"config key '{group}.width' ({out['width']}) is not divisible by "
                          f"num_heads ({out['num_heads']})")
    return out
