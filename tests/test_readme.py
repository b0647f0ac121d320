"""CI runs exactly the README's install and test commands: each command line of .ci/run stands in the README."""

from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_ci_commands_are_the_readme_commands() -> None:
    readme = ROOT.joinpath("README.md").read_text()
    ci_lines = ROOT.joinpath(".ci", "run").read_text().splitlines()
    commands = [line for line in ci_lines if line and not line.startswith(("#", "set ", "cd "))]
    assert commands == [
        "python3 -m venv .venv",
        ". .venv/bin/activate",
        'pip install -c constraints.txt ".[dev]"',
        "python -m pytest",
    ]
    for command in commands:
        assert f"\n{command}\n" in readme, command
