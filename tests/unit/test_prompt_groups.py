"""The prompt-per-subset spec of ``sd-finetune --prompt-groups`` (data/prompt_groups.py): parsing and checks."""

from __future__ import annotations

import numpy as np
import pytest

from fairdiff.data.prompt_groups import load_prompt_groups, prompt_groups, read_prompt_spec
from fairdiff.errors import ConfigError


def test_spec_maps_each_group_to_its_prompt(tmp_path):
    f = tmp_path / "spec.yaml"
    f.write_text("a handwritten digit: [0, 1]\na number: [7, 8]\n")
    pg = load_prompt_groups(f, [0, 1, 7, 8])
    assert pg.prompts == ["a handwritten digit", "a number"]
    assert pg.prompt_of_group.tolist() == [0, 0, 1, 1]
    # group indices (positions in data.groups) -> prompt index per image
    assert pg.prompt_index(np.array([3, 0, 1, 2, 2])).tolist() == [1, 0, 0, 1, 1]
    # the order of data.groups decides group indices, not the spec
    assert load_prompt_groups(f, [8, 0, 7, 1]).prompt_of_group.tolist() == [1, 0, 1, 0]


def test_json_and_single_value(tmp_path):
    f = tmp_path / "spec.json"
    f.write_text('{"zeros": 0, "ones": [1]}')
    assert read_prompt_spec(f) == {"zeros": [0], "ones": [1]}


@pytest.mark.parametrize("text, groups, needle", [
    ("a: [0, 1]\nb: [1, 2]\n", [0, 1, 2], "under two prompts"),
    ("a: [0, 1]\n", [0, 1, 2], "under no prompt"),
    ("a: [0, 1, 5]\n", [0, 1], "not in data.groups"),
    ("a: [0, 0]\n", [0], "twice"),
    ("a: [zero]\n", [0], "integer attribute values"),
    ("a: []\n", [0], "integer attribute values"),
    ("- a\n- b\n", [0], "expected a mapping"),
    ("a: [0\n", [0], "not valid YAML"),
    ("'  ': [0]\n", [0], "non-empty text"),
])
def test_bad_specs_are_one_line(tmp_path, text, groups, needle):
    f = tmp_path / "spec.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_prompt_groups(f, groups)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        read_prompt_spec(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="under no prompt"):
        prompt_groups({"a": [0]}, [0, 1])
