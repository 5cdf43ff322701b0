"""absl flags are process-global and big_vision-style scripts share names such as --config, so the test suite
(one process) must never import a flag-defining script: tests call library code and run scripts as
subprocesses."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def flag_scripts() -> set[str]:
    """The scripts' modules: experiments/<name>.py and the packages' experiments/<name>/__main__.py."""
    paths = [*(ROOT / "experiments").glob("*.py"), *(ROOT / "experiments").glob("*/__main__.py")]
    return {"experiments." + ".".join(p.relative_to(ROOT / "experiments").with_suffix("").parts) for p in paths
            if "flags.DEFINE" in p.read_text() or "config_flags.DEFINE" in p.read_text()}


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_no_test_imports_a_flag_defining_script():
    scripts = flag_scripts()
    assert {"experiments.convert", "experiments.prepare_data", "experiments.memory_plan",
            "experiments.bench.__main__"} <= scripts
    offenders = {str(p.relative_to(ROOT)): sorted(imported_modules(p) & scripts)
                 for p in (ROOT / "tests").rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}
