"""A prompt per subset of the training data: which prompt each training image is captioned with.

A text-to-image model fine-tuned on a mixture where each subset has its own prompt learns a different group
distribution per prompt, e.g. MNIST 0 vs 1 at 4:1 under "a handwritten digit" and 7 vs 8 at 1:1 under
"a number": a prompt-conditioned model with a known bias per prompt. The spec is a small YAML or JSON file that
maps each prompt to the attribute values (``data.attribute``, e.g. the digit label) of its images::

    a handwritten digit: [0, 1]
    a number: [7, 8]

Every value of ``data.groups`` belongs to exactly one prompt; the shares of the values (hence the bias within a
prompt and the weight of each prompt) stay in ``data.shares`` (here ``[0.4, 0.1, 0.25, 0.25]``).
This module reads and checks the spec only; it knows no models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fairdiff.errors import ConfigError


@dataclass(frozen=True)
class PromptGroups:
    """The prompts in file order and, for each group index of ``data.groups``, the index of its prompt."""

    prompts: list[str]
    values: list[list[int]]  # the attribute values of each prompt, as written
    prompt_of_group: np.ndarray  # [num_groups] -> prompt index

    def prompt_index(self, groups) -> np.ndarray:
        """The prompt index of each training image from its group index (``data.train_groups``)."""
        return self.prompt_of_group[np.asarray(groups, dtype=np.int64)]


def read_prompt_spec(path: str | Path) -> dict[str, list[int]]:
    """Read ``prompt: [values]`` from a YAML / JSON file, with one-line errors for anything malformed."""
    import yaml

    p = Path(path)
    where = f"--prompt-groups {p}"
    if not p.is_file():
        raise ConfigError(f"{where}: no such file")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{where}: not valid YAML / JSON ({first})") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: expected a mapping 'prompt: [values]', e.g. 'a handwritten digit: [0, 1]'")
    spec: dict[str, list[int]] = {}
    for prompt, vals in raw.items():
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(f"{where}: prompt {prompt!r} is not a non-empty text")
        if isinstance(vals, int) and not isinstance(vals, bool):
            vals = [vals]
        if (not isinstance(vals, list) or not vals
                or any(not isinstance(v, int) or isinstance(v, bool) for v in vals)):
            raise ConfigError(f"{where}: prompt '{prompt}' needs a list of integer attribute values, got {vals!r}")
        if len(set(vals)) != len(vals):
            raise ConfigError(f"{where}: prompt '{prompt}' lists a value twice: {vals}")
        spec[prompt.strip()] = list(vals)
    if len(spec) != len(raw):
        raise ConfigError(f"{where}: two prompts are the same text once stripped")
    return spec


def prompt_groups(spec: dict[str, list[int]], groups: list[int], where: str = "--prompt-groups") -> PromptGroups:
    """Match the spec to ``data.groups``: each group value under exactly one prompt, no value outside them."""
    owner: dict[int, int] = {}
    for i, vals in enumerate(spec.values()):
        for v in vals:
            if v in owner:
                raise ConfigError(f"{where}: value {v} is under two prompts "
                                  f"('{list(spec)[owner[v]]}' and '{list(spec)[i]}')")
            owner[v] = i
    extra = [v for v in owner if v not in groups]
    if extra:
        raise ConfigError(f"{where}: value(s) {extra} are not in data.groups {list(groups)}; add them there "
                          f"(with their data.shares) or remove them from the spec")
    missing = [g for g in groups if g not in owner]
    if missing:
        raise ConfigError(f"{where}: data.groups value(s) {missing} are under no prompt")
    empty = [p for p, vals in spec.items() if not vals]
    if empty:  # pragma: no cover - read_prompt_spec refuses empty lists
        raise ConfigError(f"{where}: prompt '{empty[0]}' has no values")
    return PromptGroups(list(spec), [list(v) for v in spec.values()],
                        np.array([owner[g] for g in groups], dtype=np.int64))


def load_prompt_groups(path: str | Path, groups: list[int]) -> PromptGroups:
    """:func:`read_prompt_spec` then :func:`prompt_groups`."""
    return prompt_groups(read_prompt_spec(path), list(groups), where=f"--prompt-groups {path}")
