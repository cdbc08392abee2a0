"""Small helpers shared by every layer (seeding, atomic file writes, JSON lines, typed configs).

The seeding helpers import torch, so they load on first use: reading a config does not import torch.
"""

from fairdiff.utils.io import atomic_write_text, read_json, write_json, append_jsonl, read_jsonl

_SEED = ("seed_everything", "make_generator", "derive_seed")


def __getattr__(name: str):
    if name in _SEED:
        from fairdiff.utils import seed

        return getattr(seed, name)
    raise AttributeError(f"module 'fairdiff.utils' has no attribute {name!r}")


__all__ = [
    "atomic_write_text", "read_json", "write_json", "append_jsonl", "read_jsonl",
    "seed_everything", "make_generator", "derive_seed",
]
