"""The ``focus-detr`` command line: one module per subcommand.

Each module gives ``NAME``, ``HELP``, ``DESCRIPTION``, ``add_arguments(parser)`` and
``run(args) -> exit status``.

``main`` prints a user's mistake (bad options, a missing or unreadable file, an invalid setting,
a bad dataset entry) as one ``error:`` line with exit status 2; anything else, a bug, keeps its
traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from focus_detr.cli import benchmark, convert, evaluate, export, parity, predict, presets, train
from focus_detr.errors import MissingDependencyError, UsageError

_COMMANDS = (presets, predict, parity, benchmark, train, evaluate, convert, export)


def build_parser() -> argparse.ArgumentParser:
    """The ``focus-detr`` parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="focus-detr", description="Focus-DETR object detection in plain PyTorch."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for command in _COMMANDS:
        subparser = commands.add_parser(
            command.NAME, help=command.HELP, description=command.DESCRIPTION
        )
        command.add_arguments(subparser)
        subparser.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``focus-detr`` console script."""
    args = build_parser().parse_args(argv)
    from focus_detr.allocator import retain_freed_memory_unless_disabled
    from focus_detr.config import ConfigError
    from focus_detr.engine.distributed import DistributedError
    from focus_detr.engine.step import NonFiniteLossError
    from focus_detr.errors import DatasetError
    from focus_detr.io import ImageReadError
    from focus_detr.weights.checkpoint import CheckpointError

    retain_freed_memory_unless_disabled()  # large CPU tensors reused, not faulted in anew
    try:
        _check_device(getattr(args, "device", None))
        return int(args.run(args))
    except (
        UsageError,
        ConfigError,
        CheckpointError,
        DatasetError,
        ImageReadError,
        FileNotFoundError,
        FileExistsError,
        MissingDependencyError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (DistributedError, NonFiniteLossError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _check_device(device: str | None) -> None:
    if device and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--device {device} asked for, but CUDA is not available here")


if __name__ == "__main__":
    sys.exit(main())
