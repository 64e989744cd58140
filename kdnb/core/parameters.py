"""Chapter parameters: declared once, validated and converted in one call.

A chapter's first code cell holds its papermill parameters (``None`` takes the profile's value). The setup cell
declares what each one may be, next to the settings table, and resolves them all at once::

    PARAMETERS = {
        "temperature": Real(low=0, low_open=True),
        "repeats": Integer(minimum=1),
        "t2_scaling": Boolean(),
        "taus": Sequence(of=Real(low=0, low_open=True), min_length=2, increasing=True),
    }
    P = run.settings(SETTINGS, PARAMETERS, temperature=temperature, repeats=repeats, t2_scaling=t2_scaling, taus=taus)

:meth:`kdnb.core.runtime.Chapter.settings` picks the profile's row and calls :func:`resolve`, which checks every
declared parameter (the profile's value too, when the parameter is ``None``), converts it (``repeats=2.0`` becomes
the int 2, ``temperature=8`` the float 8.0, ``taus=(3, 30)`` the list ``[3.0, 30.0]``), then runs the cross-parameter
:class:`Rule` objects attached to the declarations. A wrong type raises ``TypeError`` and a value out of range
``ValueError``; the message starts with the parameter's name and says what is allowed. Nothing is clipped.

``profile`` and ``seed`` are not declared here: :func:`kdnb.core.runtime.start_chapter` resolves and checks them.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Mapping
from collections.abc import Sequence as _AbcSequence
from typing import Any

import numpy as np

__all__ = ["Boolean", "Choice", "Integer", "Real", "Rule", "Sequence", "Spec", "resolve"]


def _shown(value: Any) -> str:
    """``value`` for an error message: its type, then its repr (``str '2'``, ``float 2.5``)."""
    return f"{type(value).__name__} {value!r}"


def _bound(x: float) -> str:
    return f"{x:g}"


class Rule:
    """A condition on a declared parameter that its type and range cannot express (often one that involves other
    settings), checked after every parameter has been converted.

    Parameters
    ----------
    check : callable
        ``check(value, settings) -> bool``: ``value`` is the parameter's converted value and ``settings`` the whole
        resolved settings dict of the chapter (the profile's row with every parameter converted). True when the rule
        holds.
    message : str or callable
        What the parameter must satisfy, starting with the parameter's name, e.g. ``"rhos must contain 1.0"``. A string
        is followed by ``", got <value>"``; a callable ``message(value, settings) -> str`` gives the whole message (to
        quote another setting). A message that does not start with the parameter's name is prefixed with it.
    counterexample : object, optional
        A value of the parameter that passes its declaration but breaks this rule under every profile's settings. The
        book's tests use it to check that the rule fires and names the parameter; None when not given.

    Raises
    ------
    TypeError
        If ``check`` is not callable or ``message`` is neither a non-empty string nor callable.
    """

    def __init__(self, check: Callable[[Any, Mapping[str, Any]], bool],
                 message: str | Callable[[Any, Mapping[str, Any]], str], *, counterexample: Any = None) -> None:
        if not callable(check):
            raise TypeError(f"check must be callable as check(value, settings), got {_shown(check)}")
        if not (callable(message) or (isinstance(message, str) and message)):
            raise TypeError(f"message must be a non-empty str or callable as message(value, settings), "
                            f"got {_shown(message)}")
        self.check = check
        self.message = message
        self.counterexample = counterexample

    def apply(self, name: str, value: Any, settings: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` with this rule's message if ``check(value, settings)`` is false.

        Parameters
        ----------
        name : str
            The parameter's name; the message starts with it.
        value : object
            The parameter's converted value.
        settings : mapping
            The chapter's resolved settings.

        Raises
        ------
        ValueError
            If the rule does not hold.
        """
        if self.check(value, settings):
            return
        text = self.message(value, settings) if callable(self.message) else f"{self.message}, got {value!r}"
        if not _names(text, name):
            text = f"{name}: {text}"
        raise ValueError(text)

    def __repr__(self) -> str:
        return f"Rule(message={self.message!r}, counterexample={self.counterexample!r})"


def _names(text: str, name: str) -> bool:
    """Whether ``text`` starts with ``name`` as a whole word (``rhos[0] ...`` names ``rhos``, ``rhosx`` does not)."""
    return text.startswith(name) and not (text[len(name):len(name) + 1].isalnum()
                                          or text[len(name):len(name) + 1] == "_")


class Spec:
    """Base class of a parameter's declaration: :meth:`convert` checks and converts one value, :attr:`rules` hold
    the cross-parameter conditions that :func:`resolve` runs after every parameter is converted.

    Parameters
    ----------
    rules : sequence of Rule, optional
        Conditions on this parameter, checked in order after all parameters are converted.

    Raises
    ------
    TypeError
        If ``rules`` is not a list or tuple of :class:`Rule`.
    """

    def __init__(self, *, rules: tuple[Rule, ...] | list[Rule] = ()) -> None:
        if not isinstance(rules, (list, tuple)) or not all(isinstance(r, Rule) for r in rules):
            raise TypeError(f"rules must be a list or tuple of Rule, got {_shown(rules)}")
        self.rules = tuple(rules)

    def describe(self, plural: bool = False) -> str:
        """What the parameter may be, in words for an error message (``"an integer >= 1"``).

        Parameters
        ----------
        plural : bool
            Describe several values (``"integers >= 1"`` rather than ``"an integer >= 1"``), for a Sequence's elements.

        Returns
        -------
        str
        """
        raise NotImplementedError

    def convert(self, value: Any, name: str) -> Any:
        """Return ``value`` checked and converted.

        Parameters
        ----------
        value : object
            The value to check.
        name : str
            The parameter's name, which starts every error message.

        Returns
        -------
        object
            The converted value.

        Raises
        ------
        TypeError
            If ``value`` has the wrong type.
        ValueError
            If it is out of range.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


class Real(Spec):
    """A real number, converted to a Python float.

    Ints, floats and numpy numbers are accepted; bools, strings, None and NaN are not.

    Parameters
    ----------
    low, high : float, optional
        Bounds of the allowed interval; None leaves that side unbounded.
    low_open, high_open : bool
        Exclude the bound itself (``low_open=True`` with ``low=0`` means > 0). Default False (bound included).
    finite : bool
        Refuse ±inf. Default True.
    rules : sequence of Rule, optional
        See :class:`Spec`.

    Raises
    ------
    TypeError
        If a bound is not a real number or a flag not a bool.
    ValueError
        If a bound is NaN, or ``low`` exceeds ``high`` (or equals it with an open side).
    """

    def __init__(self, low: float | None = None, high: float | None = None, *, low_open: bool = False,
                 high_open: bool = False, finite: bool = True, rules=()) -> None:
        super().__init__(rules=rules)
        for flag, value in (("low_open", low_open), ("high_open", high_open), ("finite", finite)):
            if not isinstance(value, bool):
                raise TypeError(f"{flag} must be True or False, got {_shown(value)}")
        for side, value in (("low", low), ("high", high)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
                raise TypeError(f"{side} must be a real number or None, got {_shown(value)}")
            if value is not None and math.isnan(value):
                raise ValueError(f"{side} must not be NaN")
        if low is not None and high is not None and (low > high or (low == high and (low_open or high_open))):
            raise ValueError(f"low and high must leave a non-empty interval, got low={low}, high={high}")
        self.low, self.high = (None if low is None else float(low)), (None if high is None else float(high))
        self.low_open, self.high_open, self.finite = low_open, high_open, finite

    def _range(self) -> str:
        """The allowed range alone: ``"in [0, 1]"``, ``"> 0"``, ``""``."""
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{_bound(self.low)}, "
                    f"{_bound(self.high)}{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_bound(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_bound(self.high)}"
        return ""

    def describe(self, plural: bool = False) -> str:
        """The allowed numbers in words: ``"a number in [0, 1]"``, ``"a finite number > 0"``.

        Parameters
        ----------
        plural : bool
            Describe several values (``"integers >= 1"`` rather than ``"an integer >= 1"``), for a Sequence's elements.

        Returns
        -------
        str
        """
        noun = ("finite numbers" if plural else "a finite number") if self.finite else ("numbers" if plural else "a number")
        if self.low is not None and self.high is not None:
            noun = "numbers" if plural else "a number"  # a bounded interval is finite already
        rng = self._range()
        return f"{noun} {rng}" if rng else noun

    def _value_phrase(self) -> str:
        """How a value error reads: ``"in [0, 1]"`` for an interval, else ``"a finite number > 0"``."""
        if self.low is not None and self.high is not None:
            return self._range()
        return self.describe()

    def convert(self, value: Any, name: str) -> float:
        """Return ``value`` as a float.

        Parameters
        ----------
        value : int, float or numpy number
            The value to check.
        name : str
            The parameter's name, for the message.

        Returns
        -------
        float

        Raises
        ------
        TypeError
            If ``value`` is not a real number (a bool, a string, None, a list...).
        ValueError
            If it is NaN, infinite (with ``finite``) or outside the interval.
        """
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be {self.describe()}, got {_shown(value)}")
        x = float(value)
        if math.isnan(x):
            raise ValueError(f"{name} must be {self.describe()}, got NaN")
        ok = not (self.finite and math.isinf(x))
        if self.low is not None:
            ok = ok and (x > self.low if self.low_open else x >= self.low)
        if self.high is not None:
            ok = ok and (x < self.high if self.high_open else x <= self.high)
        if not ok:
            raise ValueError(f"{name} must be {self._value_phrase()}, got {value!r}")
        return x


class Integer(Spec):
    """An integer, converted to a Python int.

    Ints and numpy integers are accepted, and so is an integral float (``2.0`` becomes ``2``: papermill and YAML turn
    ``-p repeats 2.0`` into a float). Bools, non-integral or infinite floats, strings and None are refused.

    Parameters
    ----------
    minimum, maximum : int, optional
        Inclusive bounds; None leaves that side unbounded.
    rules : sequence of Rule, optional
        See :class:`Spec`.

    Raises
    ------
    TypeError
        If a bound is not an int or None.
    ValueError
        If ``minimum`` exceeds ``maximum``.
    """

    def __init__(self, minimum: int | None = None, maximum: int | None = None, *, rules=()) -> None:
        super().__init__(rules=rules)
        for side, value in (("minimum", minimum), ("maximum", maximum)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
                raise TypeError(f"{side} must be an int or None, got {_shown(value)}")
        if minimum is not None and maximum is not None and minimum > maximum:
            raise ValueError(f"minimum must be <= maximum, got minimum={minimum}, maximum={maximum}")
        self.minimum = None if minimum is None else int(minimum)
        self.maximum = None if maximum is None else int(maximum)

    def _range(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            return f"in [{self.minimum}, {self.maximum}]"
        if self.minimum is not None:
            return f">= {self.minimum}"
        if self.maximum is not None:
            return f"<= {self.maximum}"
        return ""

    def describe(self, plural: bool = False) -> str:
        """The allowed integers in words: ``"an integer >= 1"``.

        Parameters
        ----------
        plural : bool
            Describe several values (``"integers >= 1"`` rather than ``"an integer >= 1"``), for a Sequence's elements.

        Returns
        -------
        str
        """
        noun = "integers" if plural else "an integer"
        rng = self._range()
        return f"{noun} {rng}" if rng else noun

    def convert(self, value: Any, name: str) -> int:
        """Return ``value`` as an int.

        Parameters
        ----------
        value : int, numpy integer or integral float
            The value to check.
        name : str
            The parameter's name, for the message.

        Returns
        -------
        int

        Raises
        ------
        TypeError
            If ``value`` is not an integer or an integral float (a bool, ``2.5``, ``inf``, a string, None...).
        ValueError
            If it is outside ``[minimum, maximum]``.
        """
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be {self.describe()}, got {_shown(value)}")
        integral = isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer()
        if isinstance(value, (int, np.integer)) or integral:
            n = int(value)
        else:
            raise TypeError(f"{name} must be {self.describe()} (a float only if integral, like 2.0), "
                            f"got {_shown(value)}")
        if (self.minimum is not None and n < self.minimum) or (self.maximum is not None and n > self.maximum):
            raise ValueError(f"{name} must be {self._range()}, got {value!r}")
        return n


class Boolean(Spec):
    """True or False exactly: ``1``, ``0``, ``"yes"`` and None are refused (a numpy bool becomes a Python bool).

    Parameters
    ----------
    rules : sequence of Rule, optional
        See :class:`Spec`.
    """

    def describe(self, plural: bool = False) -> str:
        """``"True or False"`` (``"booleans (True or False)"`` with ``plural``).

        Parameters
        ----------
        plural : bool
            Describe several values (``"integers >= 1"`` rather than ``"an integer >= 1"``), for a Sequence's elements.

        Returns
        -------
        str
        """
        return "booleans (True or False)" if plural else "True or False"

    def convert(self, value: Any, name: str) -> bool:
        """Return ``value`` as a bool.

        Parameters
        ----------
        value : bool
            The value to check.
        name : str
            The parameter's name, for the message.

        Returns
        -------
        bool

        Raises
        ------
        TypeError
            If ``value`` is not a bool.
        """
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False, got {value!r}")
        return bool(value)


def _same_choice(value: Any, choice: Any) -> bool:
    if isinstance(value, (bool, np.bool_)) != isinstance(choice, bool):
        return False
    if isinstance(value, str) != isinstance(choice, str):
        return False
    try:
        return bool(value == choice)
    except (TypeError, ValueError):
        return False


class Choice(Spec):
    """One of a fixed set of values; the declared value is returned (``2.0`` for ``Choice(1, 2)`` returns ``2``).

    A bool matches only a bool, and a string only a string (``True`` is not ``1``; ``"1"`` is not ``1``).

    Parameters
    ----------
    *values : object
        The allowed values, at least one.
    rules : sequence of Rule, optional
        See :class:`Spec`.

    Raises
    ------
    ValueError
        If no value is given.
    """

    def __init__(self, *values: Any, rules=()) -> None:
        super().__init__(rules=rules)
        if not values:
            raise ValueError("values must hold at least one allowed value, got none")
        self.values = tuple(values)

    def describe(self, plural: bool = False) -> str:
        """The allowed values in words: ``"one of ('a', 'b')"``.

        Parameters
        ----------
        plural : bool
            Describe several values (``"integers >= 1"`` rather than ``"an integer >= 1"``), for a Sequence's elements.

        Returns
        -------
        str
        """
        return f"values among {self.values}" if plural else f"one of {self.values}"

    def convert(self, value: Any, name: str) -> Any:
        """Return the declared value equal to ``value``.

        Parameters
        ----------
        value : object
            The value to check.
        name : str
            The parameter's name, for the message.

        Returns
        -------
        object
            The matching declared value.

        Raises
        ------
        ValueError
            If ``value`` is none of the declared values.
        """
        for choice in self.values:
            if _same_choice(value, choice):
                return choice
        raise ValueError(f"{name} must be one of {self.values}, got {value!r}")


class Sequence(Spec):
    """A list of values, each checked and converted by ``of``; returned as a new list.

    A list or a tuple (any sequence but a string) is accepted; a bare number is refused even if it would be a valid
    element.

    Parameters
    ----------
    of : Spec, optional
        The declaration of every element (its error names the element: ``rhos[2] must be ...``). None accepts any
        element unchanged. Its rules are not supported: attach rules to the sequence.
    min_length : int
        The fewest elements, >= 0. Default 1 (not empty).
    max_length : int, optional
        The most elements; None for no limit.
    increasing : bool
        Require strictly increasing elements (after conversion). Default False.
    unique : bool
        Refuse repeated elements (after conversion). Default False.
    rules : sequence of Rule, optional
        See :class:`Spec`; a rule's ``value`` is the converted list.

    Raises
    ------
    TypeError
        If ``of`` is not a :class:`Spec` or None, or has rules; or a length or flag has the wrong type.
    ValueError
        If ``min_length`` is negative or exceeds ``max_length``.
    """

    def __init__(self, of: Spec | None = None, *, min_length: int = 1, max_length: int | None = None,
                 increasing: bool = False, unique: bool = False, rules=()) -> None:
        super().__init__(rules=rules)
        if of is not None and not isinstance(of, Spec):
            raise TypeError(f"of must be a Spec (Real, Integer, ...) or None, got {_shown(of)}")
        if of is not None and of.rules:
            raise TypeError("of must have no rules (they would see one element): attach the rules to the Sequence")
        for side, value in (("min_length", min_length), ("max_length", max_length)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"{side} must be an int, got {_shown(value)}")
        if min_length < 0 or (max_length is not None and max_length < min_length):
            raise ValueError(f"min_length and max_length must satisfy 0 <= min_length <= max_length, "
                             f"got {min_length} and {max_length}")
        for flag, value in (("increasing", increasing), ("unique", unique)):
            if not isinstance(value, bool):
                raise TypeError(f"{flag} must be True or False, got {_shown(value)}")
        self.of, self.min_length, self.max_length = of, min_length, max_length
        self.increasing, self.unique = increasing, unique

    def describe(self, plural: bool = False) -> str:
        """The allowed lists in words: ``"a list of at least 2 strictly increasing finite numbers > 0"``.

        Parameters
        ----------
        plural : bool
            Describe several values (``"integers >= 1"`` rather than ``"an integer >= 1"``), for a Sequence's elements.

        Returns
        -------
        str
        """
        if self.max_length is not None and self.max_length == self.min_length:
            count = f"exactly {self.min_length} "
        elif self.max_length is not None:
            count = f"{self.min_length} to {self.max_length} "
        elif self.min_length > 1:
            count = f"at least {self.min_length} "
        else:
            count = ""
        order = ("strictly increasing " if self.increasing else "") + ("distinct " if self.unique else "")
        elements = self.of.describe(plural=True) if self.of is not None else "values"
        head = "lists of" if plural else ("a non-empty list of" if self.min_length == 1 and not count else "a list of")
        return f"{head} {count}{order}{elements}"

    def convert(self, value: Any, name: str) -> list:
        """Return ``value`` as a list of converted elements.

        Parameters
        ----------
        value : list or tuple
            The value to check.
        name : str
            The parameter's name, for the messages (``name[i]`` for an element).

        Returns
        -------
        list

        Raises
        ------
        TypeError
            If ``value`` is not a sequence (a bare number, a string, None...), or an element has the wrong type.
        ValueError
            If the length, the order or the uniqueness is wrong, or an element is out of range.
        """
        if isinstance(value, (str, bytes)) or not isinstance(value, _AbcSequence):
            raise TypeError(f"{name} must be {self.describe()}, got {_shown(value)}")
        items = [self.of.convert(v, f"{name}[{i}]") if self.of is not None else v for i, v in enumerate(value)]
        why = None
        if len(items) < self.min_length or (self.max_length is not None and len(items) > self.max_length):
            why = f"{len(items)} element{'' if len(items) == 1 else 's'}"
        elif self.increasing and any(not b > a for a, b in itertools.pairwise(items)):
            a, b = next((a, b) for a, b in itertools.pairwise(items) if not b > a)
            why = f"{a!r} is followed by {b!r}"
        elif self.unique and any(items[j] == items[i] for i in range(len(items)) for j in range(i)):
            why = "an element repeats"
        if why is not None:
            raise ValueError(f"{name} must be {self.describe()}, got {list(value)!r} ({why})")
        return items


def resolve(row: Mapping[str, Any], parameters: Mapping[str, Spec], /, **values: Any) -> dict[str, Any]:
    """Merge a chapter's parameters into its profile's settings, checking and converting every one.

    Parameters
    ----------
    row : mapping
        The profile's settings (one row of the chapter's ``SETTINGS`` table).
    parameters : mapping of str to Spec
        The declaration of every parameter of the chapter's parameters cell (``profile`` and ``seed`` excepted).
    **values
        Every declared parameter's value, by name. None takes the row's value (a parameter that has none, such as
        ``t2_scaling``, must be given).

    Returns
    -------
    dict
        The row with each declared parameter replaced by its converted value (parameters missing from the row are
        added).

    Raises
    ------
    TypeError
        If ``parameters`` is not a mapping of names to :class:`Spec`, or a value has the wrong type.
    ValueError
        If a value is not declared, a declared parameter is not given, or a value is out of range or breaks a
        :class:`Rule`. Declarations are checked in their order, then the rules in the same order; the first failure
        is raised, its message starting with the parameter's name.
    """
    if not isinstance(row, Mapping):
        raise TypeError(f"row must be a mapping of settings, got {_shown(row)}")
    if not isinstance(parameters, Mapping) or not all(isinstance(k, str) and isinstance(s, Spec)
                                                      for k, s in parameters.items()):
        raise TypeError("parameters must map each parameter's name (str) to its declaration (Real, Integer, Boolean, "
                        f"Choice, Sequence), got {parameters!r}")
    unknown = sorted(set(values) - set(parameters))
    if unknown:
        raise ValueError(f"unknown parameter {unknown[0]!r}; this chapter declares {sorted(parameters)}")
    missing = [name for name in parameters if name not in values]
    if missing:
        raise ValueError(f"parameter {missing[0]!r} is declared but not given: pass {missing[0]}={missing[0]} "
                         "(None takes the profile's value)")
    chosen = dict(row)
    for name, value in values.items():
        if value is not None or name not in chosen:
            chosen[name] = value
    for name, spec in parameters.items():
        chosen[name] = spec.convert(chosen[name], name)
    for name, spec in parameters.items():
        for rule in spec.rules:
            rule.apply(name, chosen[name], chosen)
    return chosen
