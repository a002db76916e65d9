"""Command-line `--config.a.b=value` overrides that name no field: a message listing the valid keys
instead of ml_collections' traceback (xray_gen.main turns a failed flag parse into these)."""

from __future__ import annotations

import importlib.util


def unknown_override_keys(argv) -> list[str]:
    """Messages for `--config.a.b=` overrides that name no field, each listing the valid keys."""
    config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if config_arg is None:
        return []
    path, _, variant = config_arg.partition(":")
    spec = importlib.util.spec_from_file_location("_xray_gen_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(variant)
    problems = []
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        node, walked = config, []
        for key in arg[len("--config."):].split("=", 1)[0].split("."):
            if not hasattr(node, "keys") or key not in node:
                valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(not a group)"
                where = ".".join(walked) or "the top level"
                problems.append(f"unknown config key {'.'.join(walked + [key])!r}; valid keys under {where}: {valid}")
                break
            node, walked = node[key], walked + [key]
    return problems
