"""Small helpers shared by every layer (seeding, atomic file writes, JSON lines)."""

from fairdiff.utils.io import atomic_write_text, read_json, write_json, append_jsonl, read_jsonl
from fairdiff.utils.seed import seed_everything, make_generator, derive_seed

__all__ = [
    "atomic_write_text", "read_json", "write_json", "append_jsonl", "read_jsonl",
    "seed_everything", "make_generator", "derive_seed",
]
