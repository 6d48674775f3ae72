"""The command line: argparse types that give one clear message, and what --resume needs from argparse (which flags
a command line sets). The one-line Parser is data.commands'; whether an output location can be written,
data.files.output_folder's and output_file's."""
import argparse
import math

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


