"""The release: the sdist and the wheel built from it, and the command's two names.

The sdist and wheel are built as ``python -m build`` builds them (the sdist first, the wheel
from the unpacked sdist) through setuptools' PEP 517 hooks, from a copy of the tree so that no
``build/`` or ``*.egg-info`` lands in the checkout, and without network or build isolation.

``smalltolarge`` and ``s2l`` are one command; help, messages and docs write ``s2l`` (README,
*Install; one command, two names*), and only that README section spells out ``smalltolarge
COMMAND``.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import smalltolarge

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "smalltolarge"
BUNDLED = ("demo_pool.jsonl", "demo_eval.jsonl")
TREE = ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "MANIFEST.in")


def _setuptools_version() -> tuple[int, ...]:
    try:
        import setuptools
    except ImportError:
        return ()
    return tuple(int(p) for p in re.findall(r"\d+", setuptools.__version__)[:2])


def _build(hook: str, source: Path, out: Path) -> Path:
    """Run setuptools' PEP 517 ``hook`` in ``source``, writing into ``out``; the built file."""
    code = f"from setuptools import build_meta as b; print(b.{hook}({str(out)!r}))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=source, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{hook} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return out / done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """The sdist, and the wheel built from the unpacked sdist."""
    if _setuptools_version() < (77,):
        pytest.skip(
            "building needs setuptools>=77 (PEP 639 license metadata), which the test extra "
            "installs: pip install -e '.[test]'"
        )
    base = tmp_path_factory.mktemp("packaging")
    tree, out = base / "tree", base / "dist"
    tree.mkdir()
    for name in TREE:
        shutil.copy2(ROOT / name, tree / name)
    shutil.copytree(
        ROOT / "src",
        tree / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
    )
    sdist = _build("build_sdist", tree, out)
    with tarfile.open(sdist) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
            tar.extractall(base / "unpacked", filter="data")
        else:
            tar.extractall(base / "unpacked")
    (unpacked,) = (base / "unpacked").iterdir()
    wheel = _build("build_wheel", unpacked, out)
    return {"sdist": sdist, "wheel": wheel}


def _wheel_files(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as z:
        return {name: z.read(name) for name in z.namelist()}


def _dist_info(files: dict[str, bytes]) -> str:
    version = smalltolarge.__version__
    prefix = f"smalltolarge-{version}.dist-info/"
    assert any(name.startswith(prefix) for name in files), f"no {prefix} in the wheel"
    return prefix


def test_wheel_is_named_for_the_version_and_any_platform(dist):
    assert dist["wheel"].name == f"smalltolarge-{smalltolarge.__version__}-py3-none-any.whl"
    assert dist["sdist"].name == f"smalltolarge-{smalltolarge.__version__}.tar.gz"


def test_wheel_holds_every_module_and_the_bundled_data(dist):
    files = _wheel_files(dist["wheel"])
    modules = {
        "smalltolarge/" + p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*.py")
        if "__pycache__" not in p.parts
    }
    in_wheel = {name for name in files if name.endswith(".py")}
    assert in_wheel == modules
    for name in BUNDLED:
        assert files[f"smalltolarge/bundled/{name}"] == (PACKAGE / "bundled" / name).read_bytes()
    # nothing but the package and its metadata: no tests, benchmarks or build leftovers
    assert {name.split("/")[0] for name in files} == {
        "smalltolarge",
        _dist_info(files).rstrip("/"),
    }


def test_wheel_installs_both_console_scripts_on_one_entry_point(dist):
    files = _wheel_files(dist["wheel"])
    entry_points = configparser.ConfigParser()
    entry_points.read_string(files[_dist_info(files) + "entry_points.txt"].decode())
    assert dict(entry_points["console_scripts"]) == {
        "smalltolarge": "smalltolarge.cli:main",
        "s2l": "smalltolarge.cli:main",
    }


def test_wheel_metadata_and_license(dist):
    files = _wheel_files(dist["wheel"])
    info = _dist_info(files)
    meta = Parser().parsestr(files[info + "METADATA"].decode())
    assert meta["Name"] == "smalltolarge"
    assert meta["Version"] == smalltolarge.__version__
    assert meta["Requires-Python"] == ">=3.10"
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    classifiers = meta.get_all("Classifier")
    for minor in (10, 11, 12, 13):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers
    assert "Topic :: Scientific/Engineering :: Artificial Intelligence" in classifiers
    assert any(c.startswith("Development Status ::") for c in classifiers)
    assert any(c.startswith("Intended Audience ::") for c in classifiers)
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert set(urls) == {"Homepage", "Repository", "Issues", "Changelog"}
    assert meta.get_payload().startswith("# smalltolarge")  # the README, as the description
    assert "torch>=2.1" in meta.get_all("Requires-Dist")
    license_text = files[info + "licenses/LICENSE"]
    assert license_text == (ROOT / "LICENSE").read_bytes()
    assert b"Apache License\n                           Version 2.0, January 2004" in license_text
    assert b"END OF TERMS AND CONDITIONS" in license_text


def test_sdist_holds_what_a_build_needs_and_the_changelog(dist):
    with tarfile.open(dist["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for name in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "PKG-INFO"):
        assert name in names
    for name in BUNDLED:
        assert f"src/smalltolarge/bundled/{name}" in names
    assert not any(n.startswith("tests/") for n in names)  # see MANIFEST.in


# --- one command, two names ------------------------------------------------------------------


def _commands() -> set[str]:
    import typer.main

    from smalltolarge.cli import app

    return set(typer.main.get_command(app).commands)


def _help(*argv: str, prog: str | None = None) -> str:
    """The top-level help, run as a console script named ``prog`` would run it (pip's script
    sets ``sys.argv[0]`` to its own path and calls ``main``), or as ``python ARGV``."""
    if prog is not None:
        code = (
            f"import sys; sys.argv[0] = '/venv/bin/{prog}'; "
            "from smalltolarge.cli import main; main()"
        )
        argv = ("-c", code)
    done = subprocess.run(
        [sys.executable, *argv, "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("prog", ["smalltolarge", "s2l"])
def test_help_names_the_command_as_typed(prog):
    out = _help(prog=prog)
    assert f"Usage: {prog} [OPTIONS] COMMAND" in out
    assert "`smalltolarge` and `s2l` are the same command" in " ".join(out.split())


def test_python_m_smalltolarge_runs_the_command():
    assert "Usage: python -m smalltolarge [OPTIONS] COMMAND" in _help("-m", "smalltolarge")


# Where commands are mentioned: the package (its messages and help), the docs and benchmarks.
_TEXT = (".py", ".md", ".sh", ".yaml", ".yml", ".txt")


def _texts() -> dict[str, str]:
    paths = [ROOT / "README.md", ROOT / "CHANGELOG.md"]
    for folder in ("src", "benchmarks", "docs"):
        paths += [p for p in (ROOT / folder).rglob("*") if p.suffix in _TEXT and p.is_file()]
    return {
        p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8", errors="replace")
        for p in paths
        if p.stat().st_size < 2_000_000
    }


def _without_the_names_section(readme: str) -> str:
    """The README less its section on the two names, which spells both out on purpose."""
    head = "## Install; one command, two names"
    assert head in readme, "the README lost the section saying smalltolarge and s2l are one"
    start = readme.index(head)
    end = readme.index("\n## ", start + len(head))
    return readme[:start] + readme[end:]


def test_messages_and_docs_name_the_command_s2l():
    """The rule (README, *Install*): everything the package prints and every doc writes
    ``s2l COMMAND``, never ``smalltolarge COMMAND``, so that a reader sees one spelling."""
    commands = _commands()
    other = re.compile(r"(?<![\w./-])smalltolarge ([a-z][a-z-]*)")
    found = []
    for path, text in _texts().items():
        if path == "README.md":
            text = _without_the_names_section(text)
        for m in other.finditer(text):
            if m.group(1) in commands:
                line = text.count("\n", 0, m.start()) + 1
                found.append(f"{path}:{line}: {m.group(0)}")
    assert not found, "write `s2l COMMAND` (README, *Install*):\n" + "\n".join(found)


def test_every_s2l_command_mentioned_exists():
    """A quoted ``s2l WORD`` (in backticks, or at the start of a line of a code block) names a
    real command: a renamed or removed command leaves no stale advice behind."""
    commands = _commands()
    mention = re.compile(r"(?:``?|^[ \t]*)s2l ([a-z][a-z-]*)", re.MULTILINE)
    stale = []
    for path, text in _texts().items():
        for m in mention.finditer(text):
            if m.group(1) not in commands:
                line = text.count("\n", 0, m.start()) + 1
                stale.append(f"{path}:{line}: {m.group(0).strip()}")
    assert not stale, "no such command:\n" + "\n".join(stale)
