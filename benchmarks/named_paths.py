"""``NAME=PATH`` command-line arguments of the benchmark scripts (trained models to compare)."""

import argparse
from pathlib import Path


def named_paths(parser: argparse.ArgumentParser, items: list[str], option: str, example: str) -> dict[str, Path]:
    """Parse ``NAME=PATH`` items into ``{name: path}``; a malformed item or a missing file is a parser error.

    Args:
        parser (argparse.ArgumentParser): Reports the error (and exits) with the usage line.
        items (list[str]): The option's values, each ``NAME=PATH``.
        option (str): The option's flag, for the message, for example ``"--checkpoints"``.
        example (str): A well-formed item, for the message.

    Returns:
        dict[str, Path]: The paths by name, in the given order.
    """
    pairs = [item.split("=", 1) for item in items]
    if any(len(pair) != 2 for pair in pairs):
        parser.error(f"{option} takes NAME=PATH pairs, for example {example}")
    missing = [path for _, path in pairs if not Path(path).is_file()]
    if missing:
        parser.error(f"{option}: file not found: {', '.join(missing)}")
    return {name: Path(path) for name, path in pairs}
