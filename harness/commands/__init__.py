"""One module per `python -m harness` command; each exposes `add_parser(subparsers)`."""
import argparse


def example_formatter(prog: str) -> argparse.RawDescriptionHelpFormatter:
    """Keeps the hand-wrapped examples in a command's epilog."""
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)
