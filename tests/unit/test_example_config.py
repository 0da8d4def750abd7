"""The shipped example config (netagent/systemd/netagent.toml.example) says it
holds "every key with its default": each key it sets has the config model's
default, and each field of the model is in it (set, or commented out where the
default is computed or unset)."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

from netagent.config import Config

EXAMPLE = Path(__file__).resolve().parents[2] / "netagent" / "systemd" / "netagent.toml.example"
COMPUTED = {"node_id"}   # the hostname: not a fixed value


def blocks(text: str) -> dict[str, str]:
    """'' (top level) and each [section] -> its lines."""
    out, name = {"": []}, ""
    for line in text.splitlines():
        if m := re.fullmatch(r"\[(\w+)\]", line.strip()):
            name = m.group(1)
            out[name] = []
        else:
            out[name].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def test_every_key_the_example_sets_has_the_models_default():
    example = tomllib.loads(EXAMPLE.read_text())
    got, default = Config.model_validate(example).model_dump(), Config().model_dump()
    differ = [f"{section}.{key}" if isinstance(values, dict) else section
              for section, values in example.items()
              for key in (values if isinstance(values, dict) else [None])
              if (got[section][key] if key else got[section]) != (default[section][key] if key else default[section])]
    assert not differ, f"the example sets these to other than their default: {differ}"


def test_every_field_of_the_model_is_in_the_example():
    text = blocks(EXAMPLE.read_text())
    missing = []
    for name, field in Config.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            missing += [f"[{name}] {key}" for key in annotation.model_fields
                        if not re.search(rf"^#? ?{key} =", text.get(name, ""), re.M)]
        elif name not in COMPUTED and not re.search(rf"^#? ?{name} =", text[""], re.M):
            missing.append(name)
    assert not missing, f"not in the example: {missing}"
