"""Option rules for the spiking core's constructors.

Each constructor checks its own options with these helpers and raises ``OptionError`` naming
the option, the value, what is allowed and a valid example value. The core never sees a
config: ``snnrun.run.assembly`` turns an ``OptionError`` raised while building group ``neuron``
into a message about ``neuron.<option>``.
"""

from __future__ import annotations


class OptionError(ValueError):
    """A constructor option outside its allowed range."""

    def __init__(self, option: str, value, allowed: str, example):
        super().__init__(f"{option}={value!r}: {option} must be {allowed}")
        self.option, self.value, self.allowed, self.example = option, value, allowed, example


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(option: str, value, example=0.0) -> float:
    """Any real number."""
    if not is_number(value):
        raise OptionError(option, value, "a number", example)
    return float(value)


def positive(option: str, value, example=1.0) -> float:
    """A number > 0."""
    if not (is_number(value) and value > 0):
        raise OptionError(option, value, "a positive number", example)
    return float(value)


def non_negative(option: str, value, example=1.0) -> float:
    """A number >= 0."""
    if not (is_number(value) and value >= 0):
        raise OptionError(option, value, "a number >= 0", example)
    return float(value)


def integer(option: str, value, low: int = 0, example=1) -> int:
    """An integer >= low."""
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        raise OptionError(option, value, f"an integer >= {low}", example)
    return value


def in_range(option: str, value, low: float, high: float, example, low_open: bool = True) -> float:
    """A number in (low, high] (or [low, high] with ``low_open=False``)."""
    if not (is_number(value) and (value > low if low_open else value >= low) and value <= high):
        raise OptionError(option, value, f"in {'(' if low_open else '['}{low:g}, {high:g}]", example)
    return float(value)


def one_of(option: str, value, choices: tuple):
    """One of ``choices``."""
    if value not in choices:
        raise OptionError(option, value, " or ".join(map(str, choices)), choices[0])
    return value
