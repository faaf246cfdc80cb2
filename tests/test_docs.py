"""Every relative link in the README and docs/ resolves: the file exists and, for
``file.md#anchor``, the file has a heading with that GitHub anchor."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens,
    a repeated anchor numbered -1, -2, ...; headings inside code blocks do not count."""
    anchors: set[str] = set()
    fenced = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6} (.+)", line)):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            n, unique = 0, slug
            while unique in anchors:
                n += 1
                unique = f"{slug}-{n}"
            anchors.add(unique)
    return anchors


def test_every_relative_link_resolves():
    broken = []
    for doc in _docs():
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):  # http(s):, mailto:
                continue
            file, _, anchor = target.partition("#")
            dest = (doc.parent / file).resolve() if file else doc
            if not dest.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and anchor not in _anchors(dest):
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_docs_paths_named_in_text_exist():
    """Plain mentions such as (docs/results.md) or docs/takecover_dream.png."""
    missing = sorted({f"{doc.relative_to(ROOT)}: {name}"
                      for doc in _docs()
                      for name in re.findall(r"\bdocs/[\w./-]*\w", doc.read_text())
                      if not (ROOT / name).exists()})
    assert not missing, "\n".join(missing)


COMMAND = re.compile(r"python (?:-m )?([\w/]+\.py)((?:[^`\n|;#]|\\\n)*)")
SHARED_OPTIONS = {"--config", "--preset", "--run", "--help-config", "-h", "--help"}


def _documented_commands() -> list[tuple[str, str, list[str]]]:
    """(document, script, arguments) of every ``python <script>.py ...`` in the README,
    docs/ and the shipped agents' READMEs, except those shown failing (``error:`` next)."""
    found = []
    for doc in [*_docs(), *sorted((ROOT / "pretrained").rglob("README.md"))]:
        text = doc.read_text().replace("\\\n", " ")
        for m in COMMAND.finditer(text):
            if text[m.end(): m.end() + 8].lstrip().startswith("error:"):
                continue
            args = [a.strip("'\"") for a in m.group(2).split()]
            found.append((doc.relative_to(ROOT).as_posix(), m.group(1), args))
    return found


def test_documented_commands_use_known_scripts_options_keys_and_presets():
    """A command in the docs still runs as written: its script exists, its options are
    the script's, its key=value overrides are config keys of the right type, and its
    --config file has its --presets (a stale command is caught before a user finds it)."""
    from worldmodels.config import (
        ConfigError,
        ExperimentConfig,
        load_config,
        merge_into,
        parse_override,
    )

    commands = _documented_commands()
    assert len(commands) > 100
    problems = []
    for doc, script, args in commands:
        path = ROOT / script
        if not path.is_file():
            problems.append(f"{doc}: {script}: no such script")
            continue
        source = path.read_text()
        config, presets = "carracing", []
        for i, arg in enumerate(args):
            value = args[i + 1] if i + 1 < len(args) else ""
            if arg.startswith("--"):
                option = arg.split("=")[0]
                if option not in SHARED_OPTIONS and f'"{option}"' not in source:
                    problems.append(f"{doc}: {script}: unknown option {option}")
                config = value if option == "--config" else config
                presets += [value] if option == "--preset" else []
            elif re.match(r"^[a-z_][\w.]*=", arg):
                try:
                    merge_into(ExperimentConfig(), parse_override(arg, ExperimentConfig()), arg)
                except ConfigError as err:
                    problems.append(f"{doc}: {script}: {err}")
        if presets and not config.endswith(".yaml") and "/" not in config:
            try:
                load_config(config, presets)
            except ConfigError as err:
                problems.append(f"{doc}: {script}: {err}")
    assert not problems, "\n".join(problems)


COMMANDS = sorted([*ROOT.glob("*.py"), *(ROOT / "tools").glob("*.py"),
                   *(ROOT / "benchmarks").glob("*.py")])


@pytest.mark.parametrize("script", [p.relative_to(ROOT).as_posix() for p in COMMANDS])
def test_every_commands_help_prints_its_docstrings_first_paragraph(script, monkeypatch, capsys):
    """--help runs (no help string breaks argparse's % formatting) and describes the
    command with its docstring's whole first paragraph, not a line cut mid-sentence."""
    import runpy

    from worldmodels.config import doc_summary

    path = ROOT / script
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(path), run_name="__main__")
    assert done.value.code in (0, None)
    summary = doc_summary(ast.get_docstring(ast.parse(path.read_text())))
    assert summary.endswith((".", ":", ")", "?")), f"{script}'s first paragraph: {summary!r}"
    assert "".join(summary.split()) in "".join(capsys.readouterr().out.split())  # as wrapped
