"""The command line: argparse types that give one clear message, and what --resume needs from argparse. (Whether the
output locations can be written is data.files.output_folder's and output_file's.)"""
import argparse
import json
import math
import os

from data.errors import InputError


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, "PROG: error: MESSAGE (see --help)", with exit status 2, like every other
    bad input (its usage block would bury the one line that matters)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def checked(parse):
    """An argparse type from a parser that raises ValueError: its message, not argparse's "invalid value"."""
    def convert(text):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return convert


def on_off(text):
    """A switch's value from the command line: 1/0, on/off, true/false, yes/no."""
    value = str(text).strip().lower()
    if value in ("1", "on", "true", "yes"):
        return True
    if value in ("0", "off", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off (1 or 0), got {text!r}")


def at_least(low, kind=int, above=False):
    """An argparse type for a number >= low (> low with above=True)."""
    def convert(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a{'n integer' if kind is int else ' number'}, got {text!r}")
        if not math.isfinite(value) or value < low or (above and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if above else '>='} {low}, got {text}")
        return value
    return convert


def amp_setting(text):
    """--amp's value: auto, on or off (1 and 0 too, the seed's spellings)."""
    return "auto" if str(text).strip().lower() == "auto" else ("on" if on_off(text) else "off")


def cache_dir_setting(text):
    """--cache-dir's value: a folder, or off."""
    return "off" if str(text).strip().lower() in ("off", "none") else str(text)


def given_flags(parser, argv):
    """The destinations the command line sets itself, whatever the spelling or abbreviation of their flags."""
    unset = object()  # argparse leaves a destination the namespace already holds alone unless a flag sets it
    preset = argparse.Namespace(**{k: unset for k in vars(parser.parse_args([]))})
    return sorted(k for k, v in vars(parser.parse_args(argv, namespace=preset)).items() if v is not unset)


def stored_args(run_dir):
    """The arguments a run was started with (run_dir/args.json); InputError naming the file when it is missing."""
    path = os.path.join(run_dir, "args.json")
    if not os.path.isfile(path):
        raise InputError(f"cannot resume: {path} not found (is {run_dir} a run folder?)")
    try:
        with open(path) as f:
            stored = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot resume: {path} is not readable JSON ({e}); it should hold the run's flags as "
                         f"written by traintest.py") from None
    if not isinstance(stored, dict):
        raise InputError(f"cannot resume: {path} holds a JSON {type(stored).__name__}, not the run's flags (an object)")
    stored.setdefault("output_dir", stored.get("run_dir"))  # args.json of the first format
    return stored
