"""Argument checks shared by every module of keras-pcl.

One family of checks, so that every error reads the same way: it names the
argument, says what was expected and ends with `Received: name=value`
(the form Keras and KerasHub use). Each check returns the value it accepted,
so a constructor can check and store in one line.
"""

import difflib


def raise_invalid(name, value, expected, hint=""):
    """Raises `ValueError("`name` must be EXPECTED. HINT Received: name=value")`.

    Args:
        name: the argument's name.
        value: what was passed.
        expected: what the argument must be, as a phrase ("an int >= 1").
        hint: an optional sentence on how to fix it.

    Example:

    >>> try:
    ...     raise_invalid("num_peers", 1, "an int >= 2")
    ... except ValueError as error:
    ...     print(error)
    `num_peers` must be an int >= 2. Received: num_peers=1
    """
    hint = f" {hint.strip()}" if hint else ""
    raise ValueError(f"`{name}` must be {expected}.{hint} Received: {name}={value!r}")


def check(ok, name, value, expected, hint=""):
    """Raises `raise_invalid(name, value, expected)` unless `ok`; returns `value`."""
    if not ok:
        raise_invalid(name, value, expected, hint)
    return value


def check_int(name, value, minimum=None, maximum=None):
    """An int (not a bool) in `[minimum, maximum]`; returns it."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (minimum is None or value >= minimum)
    ok = ok and (maximum is None or value <= maximum)
    if not ok:
        if maximum is None:
            expected = "an int" if minimum is None else f"an int >= {minimum}"
        else:
            expected = f"an int in [{minimum}, {maximum}]"
        raise_invalid(name, value, expected)
    return value


def check_number(name, value, expected, condition=None):
    """An int or float (not a bool) for which `condition(value)` holds.

    Args:
        name: the argument's name.
        value: what was passed.
        expected: the phrase of the error, e.g. "a number in [0, 1)".
        condition: optional predicate on the number.

    Returns:
        `value` as a float.
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or (condition is not None and not condition(value)):
        raise_invalid(name, value, expected)
    return float(value)


def check_bool(name, value):
    """True or False (not 0 or 1); returns it."""
    return check(isinstance(value, bool), name, value, "True or False")


def check_choice(name, value, choices):
    """One of `choices`; the error suggests close matches."""
    if value in choices:
        return value
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=3)
    hint = f"Did you mean {close[0]!r}?" if close else ""
    raise_invalid(name, value, f"one of {list(choices)}", hint)


def check_class_names(names, num_classes):
    """`names` as a tuple of `num_classes` distinct strings (None: None).

    Raises:
        ValueError: not a list of distinct strings, one per class.
    """
    if names is None:
        return None
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise_invalid("class_names", names, "a list of str, one per class, or None")
    names = tuple(names)
    if len(names) != num_classes or len(set(names)) != len(names):
        raise_invalid(
            "class_names",
            names,
            f"{num_classes} distinct names, one per class (num_classes={num_classes})",
        )
    return names
