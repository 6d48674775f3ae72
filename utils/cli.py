"""The command line: argparse types that give one clear message, what --resume needs from argparse, and the checks
that the output locations can be written before any work starts."""
import argparse
import math
import os
import tempfile

from data.errors import InputError


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


def parse_sources(text):
    """A comma list of Source names."""
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if not names:
        raise ValueError(f"{text!r} names no source")
    return names


def given_flags(parser, argv):
    """The destinations the command line sets itself, whatever the spelling or abbreviation of their flags."""
    unset = object()  # argparse leaves a destination the namespace already holds alone unless a flag sets it
    preset = argparse.Namespace(**{k: unset for k in vars(parser.parse_args([]))})
    return sorted(k for k, v in vars(parser.parse_args(argv, namespace=preset)).items() if v is not unset)


def writable_folder(path, flag):
    """`path`, created if needed and proven writable by writing a file in it; InputError naming `flag` otherwise."""
    problem = folder_problem(path)
    if problem:
        raise InputError(f"{flag} {path}: {problem}")
    return path


def writable_file(path, flag):
    """`path` when a file can be written there (its folder created if needed); InputError naming `flag` otherwise."""
    if os.path.isdir(path):
        raise InputError(f"{flag} {path} is a folder; give the path of a file")
    folder = os.path.dirname(os.path.abspath(path))
    problem = folder_problem(folder)
    if problem:
        raise InputError(f"{flag} {path} cannot be written: its folder {folder}: {problem}")
    return path


def folder_problem(path):
    """Why no file can be written in folder `path` (created if missing), or None when one can."""
    if os.path.exists(path) and not os.path.isdir(path):
        return "is a file, not a folder"
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        return f"not a writable folder ({e.strerror or e})"
    return None
