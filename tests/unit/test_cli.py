"""The `slimline` entry point, and the commands the docs tell users to run."""
import importlib
import re
import subprocess
import sys

import pytest

from slimline.cli import COMMANDS, main
from tests.support.project import ROOT, run_env

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "infra" / "README.md"]


def test_every_command_maps_to_a_module_cli():
    for name, (module, text) in COMMANDS.items():
        assert callable(importlib.import_module(module).main), name
        assert text


def test_help_lists_the_commands_and_unknown_ones_fail(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_check_reports_bad_params_without_loading_torch(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  lr: -1\n")
    code = ("import sys\nfrom slimline.cli import main\n"
            f"rc = main(['check', {str(bad)!r}])\nprint(rc, 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=run_env(), capture_output=True,
                          text=True)
    assert proc.stdout.split() == ["2", "False"], proc.stderr
    assert "train.lr" in proc.stderr


def test_console_script_is_installed():
    script = ROOT / ".venv" / "bin" / "slimline"
    if not script.exists():
        pytest.skip("not running from the project's .venv")
    proc = subprocess.run([str(script), "check"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and "params.yaml: OK" in proc.stdout


def doc_commands():
    text = "\n".join(p.read_text() for p in DOCS if p.exists())
    modules = set(re.findall(r"python -m ([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*)", text))
    # in code: `slimline X ...` inline, or a line of a code block starting with it
    subcommands = set(re.findall(r"(?:`|^\s*(?:\.venv/bin/)?)slimline ([a-z][a-z0-9]*)", text, re.M))
    targets = set(re.findall(r"(?:`|^\s*(?:time )?)make ([a-z][a-z0-9-]*)", text, re.M))
    return modules, subcommands, targets


def test_every_command_the_docs_name_exists():
    modules, subcommands, targets = doc_commands()
    assert modules and targets
    for module in modules:
        if module.split(".")[0] in ("tasks", "slimline", "flows", "infra", "benchmarks"):
            path = ROOT / module.replace(".", "/")
            assert path.with_suffix(".py").exists() or path.is_dir(), f"docs name python -m {module}"
    make = (ROOT / "Makefile").read_text()
    for target in targets:
        assert re.search(rf"^{re.escape(target)}:", make, re.M), f"docs name make {target}"
    for sub in subcommands:
        assert sub in COMMANDS, f"docs name slimline {sub}"


def test_relative_links_in_the_docs_resolve():
    for page in DOCS:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to missing {target}"
