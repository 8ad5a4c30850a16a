"""Config defaults: one source (the schema), documented by config/config.yaml, read by rules and commands."""

import copy

import yaml
from conftest import ROOT

from kneeflow.workflow import schema


def _leaves(d, prefix=()):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, (*prefix, k))
        else:
            yield (*prefix, k), v


def test_config_yaml_documents_the_schema_defaults():
    documented = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    defaults = schema.defaults()
    checked = 0
    for path, value in _leaves(defaults):
        d = documented
        for k in path:
            d = d[k]
        assert d == value, f"config.yaml {'.'.join(path)} = {d!r}, the schema's default is {value!r}"
        checked += 1
    assert checked > 40


def test_defaults_fill_missing_sections_and_keys_only():
    cfg = {"samples": "s.tsv", "allowed_roots": ["."], "t2": {"method": "nonlinear"}, "shape": {"fit": {"lr": 0.01}}}
    filled = schema.apply_defaults(copy.deepcopy(cfg), schema.load(schema.CONFIG_SCHEMA))
    assert filled["t2"]["method"] == "nonlinear" and filled["t2"]["max_ms"] == 100  # given kept, missing filled
    assert filled["shape"]["fit"]["lr"] == 0.01 and filled["shape"]["fit"]["iterations"] == 2000
    assert filled["thickness"]["ray_out_mm"] == 10.0 and filled["segmentation"]["models"] == {}
    schema.validate_config(filled, schema.CONFIG_SCHEMA)


def test_the_commands_take_their_defaults_from_the_schema():
    from kneeflow.workflow.cli import _parser

    a = _parser().parse_args(["thickness", "--labels", "l", "--meshes", "m", "--table", "t"])
    d = schema.defaults()
    assert a.ray_out_mm == d["thickness"]["ray_out_mm"] and a.bone_smooth_var_mm2 == d["mesh"]["bone_smooth_var_mm2"]
    assert a.n_points == ",".join(f"{k}={v}" for k, v in d["mesh"]["n_points"].items())
