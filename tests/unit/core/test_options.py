"""Start-up options: typed, defaults from the environment, and rayft's variables read in rayft.options only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from rayft import options
from rayft.errors import RayftError
from rayft.options import StartupOptions, startup_options

PACKAGE = Path(options.__file__).resolve().parent


def test_startup_options_default_from_the_environment_and_take_overrides():
    assert startup_options({}) == StartupOptions() == StartupOptions(True, True, 19, False)
    env = {"RAYFT_WARM": "0", "RAYFT_RAY_QUIET": "0", "RAYFT_RAY_NICE": "5", "RAYFT_DASHBOARD": "1"}
    assert startup_options(env) == StartupOptions(warm_pool=False, quiet_ray=False, nice=5, dashboard=True)
    assert startup_options(env, warm_pool=True, nice=None) == StartupOptions(True, False, 5, True)  # a CLI flag
    with pytest.raises(RayftError, match=r"RAYFT_RAY_NICE: expected an integer from 0 to 19, got 'low'"):
        startup_options({"RAYFT_RAY_NICE": "low"})
    with pytest.raises(RayftError, match=r"StartupOptions.nice: expected an integer from 0 to 19.*got 20"):
        StartupOptions(nice=20)
    with pytest.raises(Exception):
        StartupOptions().nice = 0  # frozen


def test_variables_set_for_rays_processes_read_back_there(monkeypatch):
    for var in (options.QUIET_THREADS_VAR, options.NICE_VAR):
        monkeypatch.delenv(var, raising=False)
    assert options.thread_niceness() == 0  # not a process of a local Ray rayft started
    for key, value in options.thread_env(7).items():
        monkeypatch.setenv(key, value)
    assert options.thread_niceness() == 7
    monkeypatch.setenv("RAYFT_CACHE", "/somewhere")
    assert options.cache_root() == Path("/somewhere") and options.forwarded_env() == {"RAYFT_CACHE": "/somewhere"}
    monkeypatch.delenv("RAY_JOB_ADDRESS", raising=False)
    monkeypatch.setenv("RAYFT_ADDRESS", "http://head:8265")
    assert options.job_address() == "http://head:8265"
    monkeypatch.setenv("RAYFT_ADMIN_TOKEN", "")
    assert options.admin_token() is None


def test_the_cli_hands_its_options_down(monkeypatch):
    from rayft import cli

    monkeypatch.setenv("RAYFT_RAY_NICE", "3")
    args = cli.build_parser().parse_args(["sweep", "experiment.yaml", "--no-warm-pool"])
    seen = {}

    class Started(Exception):
        pass

    def run_sweep(cfg, **kwargs):
        seen.update(kwargs)
        raise Started

    monkeypatch.setattr(cli, "_config", lambda a: "cfg")
    monkeypatch.setattr("rayft.sweep.run_sweep", run_sweep)
    with pytest.raises(Started):
        args.fn(args)
    assert seen["options"] == StartupOptions(warm_pool=False, nice=3)


def _string_constants(tree: ast.Module) -> dict[str, str]:
    """Module-level ``NAME = "RAYFT_..."`` assignments, and names imported from rayft.options."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            found.update({t.id: node.value.value for t in node.targets if isinstance(t, ast.Name)})
        elif isinstance(node, ast.ImportFrom) and node.module == "rayft.options":
            found.update({a.asname or a.name: getattr(options, a.name) for a in node.names
                          if isinstance(getattr(options, a.name, None), str)})
    return found


def environment_reads(path: Path) -> list[str]:
    """Lookups of a ``RAYFT_*`` variable: ``.get``/``.setdefault``/``os.getenv``, ``[...]`` and ``in``."""
    tree = ast.parse(path.read_text(), str(path))
    names = _string_constants(tree)

    def rayft_var(node: ast.AST) -> str | None:
        value = node.value if isinstance(node, ast.Constant) else names.get(getattr(node, "id", ""))
        if isinstance(node, ast.Attribute) and getattr(node.value, "id", "") == "options":
            value = getattr(options, node.attr, None)
        return value if isinstance(value, str) and value.startswith("RAYFT_") else None

    reads = []  # any lookup of a RAYFT_* key counts: os.environ, a copy of it, or another process's environ
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            if node.func.attr in ("get", "setdefault", "getenv") and (var := rayft_var(node.args[0])):
                reads.append(f"{node.lineno}: {var}")
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and (var := rayft_var(node.slice)):
            reads.append(f"{node.lineno}: {var}")
        elif isinstance(node, ast.Compare) and isinstance(node.ops[0], (ast.In, ast.NotIn)):
            if var := rayft_var(node.left):
                reads.append(f"{node.lineno}: {var}")
    return reads


def test_no_rayft_variable_is_read_outside_the_options_module():
    offenders = {str(p.relative_to(PACKAGE.parent)): reads for p in sorted(PACKAGE.rglob("*.py"))
                 if p.name != "options.py" and (reads := environment_reads(p))}
    assert not offenders, f"read RAYFT_* variables through rayft.options only: {offenders}"
    seen = {read.split(": ")[1] for read in environment_reads(PACKAGE / "options.py")}
    assert {"RAYFT_WARM", "RAYFT_RAY_NICE", "RAYFT_CACHE", "RAYFT_PRELOAD_TAG"} <= seen  # the scan sees them
