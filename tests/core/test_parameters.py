"""Chapter parameters: each declaration's conversions and refusals, rules, and the one call that resolves them."""

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdnb.core.parameters import (
    Boolean,
    Choice,
    Integer,
    Real,
    Rule,
    Sequence,
    Spec,
    resolve,
)
from kdnb.core.runtime import start_chapter

NOT_NUMBERS = [None, "2", "two", b"2", [2], (2,), {"x": 2}, 2j]


def names(message, name):
    """The message starts with the parameter's name as a whole word (``rhos[0] ...`` names ``rhos``)."""
    return re.match(rf"{re.escape(name)}(?![\w])", message) is not None


# --- Integer ---------------------------------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-(2**52), max_value=2**52))
def test_integer_converts_any_int_valued_float_to_that_int(n):
    out = Integer().convert(float(n), "k")
    assert type(out) is int and out == n
    out = Integer().convert(np.float64(n), "k")
    assert type(out) is int and out == n
    assert type(Integer().convert(np.int64(n), "k")) is int


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not (math.isfinite(x) and x.is_integer())))
def test_integer_refuses_any_non_integral_float(x):
    with pytest.raises(TypeError) as info:
        Integer(minimum=1).convert(x, "repeats")
    assert names(str(info.value), "repeats") and "an integer >= 1" in str(info.value)


@pytest.mark.parametrize("value", [True, False, np.bool_(True), *NOT_NUMBERS])
def test_integer_refuses_bools_and_non_numbers(value):
    with pytest.raises(TypeError, match=r"^steps must be an integer >= 1, got "):
        Integer(minimum=1).convert(value, "steps")


@settings(max_examples=100, deadline=None)
@given(st.integers(-50, 50), st.integers(-50, 50), st.integers(-100, 100))
def test_integer_range_is_inclusive_and_refused_values_name_it(low, high, n):
    if low > high:
        with pytest.raises(ValueError, match="minimum must be <= maximum"):
            Integer(minimum=low, maximum=high)
        return
    spec = Integer(minimum=low, maximum=high)
    if low <= n <= high:
        assert spec.convert(n, "k") == n
    else:
        with pytest.raises(ValueError, match=rf"^k must be in \[{low}, {high}\], got {n}$"):
            spec.convert(n, "k")


def test_integer_messages_keep_the_chapters_wording():
    with pytest.raises(ValueError, match=r"^steps must be >= 1, got 0$"):
        Integer(minimum=1).convert(0, "steps")
    with pytest.raises(ValueError, match=r"^repeats must be >= 1, got 0.0$"):
        Integer(minimum=1).convert(0.0, "repeats")  # converted first, then refused for the range
    with pytest.raises(ValueError, match=r"^k must be <= 3, got 4$"):
        Integer(maximum=3).convert(4, "k")
    with pytest.raises(TypeError, match="minimum must be an int"):
        Integer(minimum=1.0)
    with pytest.raises(TypeError, match="maximum must be an int"):
        Integer(maximum=True)


# --- Real ------------------------------------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.one_of(st.integers(-(10**6), 10**6), st.floats(allow_nan=False, allow_infinity=False)))
def test_real_returns_the_same_number_as_a_python_float(x):
    out = Real().convert(x, "x")
    assert type(out) is float and out == float(x)
    assert type(Real().convert(np.float32(1.5), "x")) is float


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=True, width=32), st.booleans(), st.booleans())
def test_real_interval_membership_matches_the_definition(x, low_open, high_open):
    spec = Real(low=-1.0, high=2.0, low_open=low_open, high_open=high_open)
    inside = (x > -1 if low_open else x >= -1) and (x < 2 if high_open else x <= 2)
    if inside:
        assert spec.convert(x, "r") == x
    else:
        interval = f"{'(' if low_open else '['}-1, 2{')' if high_open else ']'}"
        with pytest.raises(ValueError) as info:
            spec.convert(x, "r")
        assert str(info.value) == f"r must be in {interval}, got {x!r}"


@pytest.mark.parametrize("value", [True, False, np.bool_(False), *NOT_NUMBERS])
def test_real_refuses_bools_and_non_numbers(value):
    with pytest.raises(TypeError, match=r"^rho must be a number in \[0, 1\], got "):
        Real(low=0, high=1).convert(value, "rho")


def test_real_messages_keep_the_chapters_wording():
    with pytest.raises(ValueError, match=r"^rho must be in \[0, 1\], got 1.5$"):
        Real(low=0, high=1).convert(1.5, "rho")
    positive = Real(low=0, low_open=True)
    for bad in (-2.0, 0, 0.0, math.inf):
        with pytest.raises(ValueError, match=r"^temperature must be a finite number > 0, got "):
            positive.convert(bad, "temperature")
    with pytest.raises(ValueError, match="NaN"):
        positive.convert(math.nan, "temperature")
    assert Real(low=0, finite=False).convert(math.inf, "x") == math.inf
    with pytest.raises(ValueError, match="NaN"):
        Real(finite=False).convert(float("nan"), "x")
    assert positive.convert(8, "temperature") == 8.0 and type(positive.convert(8, "temperature")) is float


def test_real_refuses_bad_declarations():
    with pytest.raises(ValueError, match="non-empty interval"):
        Real(low=1, high=0)
    with pytest.raises(ValueError, match="non-empty interval"):
        Real(low=1, high=1, low_open=True)
    assert Real(low=1, high=1).convert(1, "x") == 1.0
    with pytest.raises(TypeError, match="low must be a real number"):
        Real(low="0")
    with pytest.raises(ValueError, match="high must not be NaN"):
        Real(high=math.nan)
    with pytest.raises(TypeError, match="low_open must be True or False"):
        Real(low=0, low_open=1)


# --- Boolean and Choice ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [1, 0, 1.0, "yes", "True", None, [True]])
def test_boolean_requires_a_bool_exactly(value):
    with pytest.raises(TypeError, match=r"^t2_scaling must be True or False, got "):
        Boolean().convert(value, "t2_scaling")


def test_boolean_returns_python_bools():
    assert Boolean().convert(True, "b") is True and Boolean().convert(False, "b") is False
    assert Boolean().convert(np.bool_(True), "b") is True


def test_choice_returns_the_declared_value_and_keeps_bools_and_strings_apart():
    spec = Choice("mse", "kl", 2)
    assert spec.convert("kl", "loss") == "kl"
    out = spec.convert(2.0, "loss")
    assert out == 2 and type(out) is int
    for bad in ("l1", "2", True, None, [2]):
        with pytest.raises(ValueError, match=r"^loss must be one of \('mse', 'kl', 2\), got "):
            spec.convert(bad, "loss")
    assert Choice(True, False).convert(True, "b") is True
    with pytest.raises(ValueError):
        Choice(True, False).convert(1, "b")
    with pytest.raises(ValueError, match="at least one allowed value"):
        Choice()


# --- Sequence --------------------------------------------------------------------------------------------------------

@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 10**6), min_size=1, max_size=8))
def test_sequence_converts_elementwise_and_accepts_tuples(values):
    spec = Sequence(of=Integer(minimum=1))
    floats = [float(v) for v in values]
    for given_value in (values, tuple(values), floats, tuple(floats)):
        out = spec.convert(given_value, "ns")
        assert out == values and type(out) is list and all(type(v) is int for v in out)
        assert out is not given_value


@pytest.mark.parametrize("value", [0.5, 1, None, "0.5", b"0.5", {0.5}, np.array([0.5])])
def test_sequence_refuses_anything_but_a_list_or_tuple(value):
    with pytest.raises(TypeError, match=r"^rhos must be a non-empty list of numbers in \(0, 1\], got "):
        Sequence(of=Real(low=0, high=1, low_open=True)).convert(value, "rhos")


def test_sequence_names_the_bad_element():
    spec = Sequence(of=Real(low=0, high=1, low_open=True))
    with pytest.raises(ValueError, match=r"^rhos\[1\] must be in \(0, 1\], got 0$"):
        spec.convert([0.5, 0, 1.0], "rhos")
    with pytest.raises(TypeError, match=r"^rhos\[2\] must be a number in \(0, 1\], got str 'a'$"):
        spec.convert([0.5, 1.0, "a"], "rhos")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.1, 1000.0), min_size=0, max_size=6))
def test_sequence_length_and_order_match_the_definition(values):
    spec = Sequence(of=Real(low=0, low_open=True), min_length=2, increasing=True)
    ok = len(values) >= 2 and all(b > a for a, b in zip(values, values[1:]))
    if ok:
        assert spec.convert(values, "taus") == values
    else:
        with pytest.raises(ValueError) as info:
            spec.convert(values, "taus")
        assert str(info.value).startswith("taus must be a list of at least 2 strictly increasing finite numbers > 0")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=0, max_size=6))
def test_sequence_uniqueness_and_bounds_match_the_definition(values):
    spec = Sequence(of=Integer(), min_length=0, max_length=4, unique=True)
    ok = len(values) <= 4 and len(set(values)) == len(values)
    if ok:
        assert spec.convert(values, "ks") == values
    else:
        with pytest.raises(ValueError, match=r"^ks must be a list of 0 to 4 distinct integers, got "):
            spec.convert(values, "ks")


def test_sequence_messages_say_why():
    spec = Sequence(of=Real(low=0, low_open=True), min_length=2, increasing=True)
    with pytest.raises(ValueError, match=r"got \[30.0, 3.0\] \(30.0 is followed by 3.0\)$"):
        spec.convert([30.0, 3.0], "taus")
    with pytest.raises(ValueError, match=r"got \[3.0\] \(1 element\)$"):
        spec.convert([3.0], "taus")
    with pytest.raises(ValueError, match=r"^xs must be a non-empty list of values, got \[\] \(0 elements\)$"):
        Sequence().convert([], "xs")
    assert Sequence(min_length=0).convert((), "xs") == []
    assert Sequence(of=Sequence(of=Integer())).convert([[1.0], (2, 3)], "grid") == [[1], [2, 3]]
    assert Sequence(min_length=3, max_length=3).describe() == "a list of exactly 3 values"


def test_sequence_refuses_bad_declarations():
    with pytest.raises(TypeError, match="of must be a Spec"):
        Sequence(of=float)
    with pytest.raises(TypeError, match="of must have no rules"):
        Sequence(of=Integer(rules=[Rule(lambda v, s: True, "x")]))
    with pytest.raises(ValueError, match="min_length"):
        Sequence(min_length=3, max_length=2)
    with pytest.raises(TypeError, match="increasing must be True or False"):
        Sequence(increasing="yes")


# --- Rules and resolve -----------------------------------------------------------------------------------------------

ROW = {"rhos": [0.1, 0.5, 1.0], "n_oracle": 512, "repeats": 2, "n_values": [16, 32, 64]}
SPECS = {
    "rhos": Sequence(of=Real(low=0, high=1, low_open=True), rules=[
        Rule(lambda rhos, s: 1.0 in rhos, "rhos must contain 1.0", counterexample=[0.1, 0.5])]),
    "n_oracle": Integer(minimum=1, rules=[
        Rule(lambda n, s: n > max(s["n_values"]),
             lambda n, s: f"n_oracle must be larger than the largest n ({max(s['n_values'])}), got {n}",
             counterexample=16)]),
    "repeats": Integer(minimum=1),
    "t2_scaling": Boolean(),
}


def test_resolve_takes_the_row_for_none_and_converts_every_parameter():
    out = resolve(ROW, SPECS, rhos=None, n_oracle=None, repeats=2.0, t2_scaling=False)
    assert out == {**ROW, "repeats": 2, "t2_scaling": False}
    assert type(out["repeats"]) is int and out["rhos"] is not ROW["rhos"]
    out = resolve(ROW, SPECS, rhos=(0.5, 1), n_oracle=1000.0, repeats=None, t2_scaling=True)
    assert out["rhos"] == [0.5, 1.0] and all(type(r) is float for r in out["rhos"])
    assert out["n_oracle"] == 1000 and type(out["n_oracle"]) is int and out["t2_scaling"] is True
    assert ROW == {"rhos": [0.1, 0.5, 1.0], "n_oracle": 512, "repeats": 2, "n_values": [16, 32, 64]}  # not modified


def test_resolve_checks_the_rows_own_values_too():
    with pytest.raises(ValueError, match=r"^repeats must be >= 1, got 0$"):
        resolve({**ROW, "repeats": 0}, SPECS, rhos=None, n_oracle=None, repeats=None, t2_scaling=False)


def test_rules_run_after_conversion_with_the_whole_settings():
    base = dict(rhos=None, n_oracle=None, repeats=None, t2_scaling=False)
    with pytest.raises(ValueError, match=r"^rhos must contain 1.0, got \[0.1, 0.5\]$"):
        resolve(ROW, SPECS, **{**base, "rhos": [0.1, 0.5]})
    with pytest.raises(ValueError, match=r"^n_oracle must be larger than the largest n \(64\), got 64$"):
        resolve(ROW, SPECS, **{**base, "n_oracle": 64.0})  # converted to 64 before the rule sees it
    assert resolve({**ROW, "n_values": [16]}, SPECS, **{**base, "n_oracle": 17})["n_oracle"] == 17
    # A type error is raised before any rule runs, whatever the declaration order.
    with pytest.raises(TypeError, match="^t2_scaling"):
        resolve(ROW, SPECS, **{**base, "rhos": [0.1], "t2_scaling": 1})


def test_a_rule_message_without_the_name_gets_it():
    specs = {"k": Integer(rules=[Rule(lambda k, s: k % 2 == 0, "must be even")])}
    with pytest.raises(ValueError, match=r"^k: must be even, got 3$"):
        resolve({}, specs, k=3)
    with pytest.raises(TypeError, match="check must be callable"):
        Rule("k > 0", "k must be positive")
    with pytest.raises(TypeError, match="message must be a non-empty str"):
        Rule(lambda k, s: True, "")


def test_resolve_refuses_unknown_missing_and_valueless_parameters():
    base = dict(rhos=None, n_oracle=None, repeats=None, t2_scaling=False)
    with pytest.raises(ValueError, match=r"unknown parameter 'n_values'; this chapter declares"):
        resolve(ROW, SPECS, **base, n_values=[1])
    with pytest.raises(ValueError, match=r"parameter 'repeats' is declared but not given"):
        resolve(ROW, SPECS, rhos=None, n_oracle=None, t2_scaling=False)
    with pytest.raises(TypeError, match=r"^t2_scaling must be True or False, got None$"):
        resolve(ROW, SPECS, **{**base, "t2_scaling": None})  # not in the row: None has no profile value
    with pytest.raises(TypeError, match="parameters must map"):
        resolve(ROW, {"repeats": int}, repeats=1)
    with pytest.raises(TypeError, match="row must be a mapping"):
        resolve([1], SPECS, **base)


def test_specs_describe_themselves():
    assert repr(Integer(minimum=1)) == "Integer(an integer >= 1)"
    assert Real(low=0, low_open=True).describe() == "a finite number > 0"
    assert Real(high=1, high_open=True, finite=False).describe() == "a number < 1"
    assert Sequence(of=Boolean()).describe() == "a non-empty list of booleans (True or False)"
    assert Choice("a").describe(plural=True) == "values among ('a',)"
    with pytest.raises(NotImplementedError):
        Spec().convert(1, "x")


TABLE = {profile: {"repeats": n, "rho": 0.5} for profile, n in (("smoke", 1), ("default", 3), ("full", 9))}


def test_chapter_settings_resolves_declared_parameters():
    run = start_chapter("test_parameters", profile="default", seed=0, device="cpu", quiet=True)
    specs = {"repeats": Integer(minimum=1), "rho": Real(low=0, high=1), "flag": Boolean()}
    out = run.settings(TABLE, specs, repeats=2.0, rho=None, flag=True)
    assert out == {"repeats": 2, "rho": 0.5, "flag": True} and type(out["repeats"]) is int
    assert run.settings(TABLE, specs, repeats=None, rho=1, flag=False) == {"repeats": 3, "rho": 1.0, "flag": False}
    with pytest.raises(TypeError, match=r"^repeats must be an integer >= 1 \(a float only if integral"):
        run.settings(TABLE, specs, repeats=2.5, rho=None, flag=True)
    with pytest.raises(ValueError, match="missing"):
        run.settings({"smoke": {}}, specs, repeats=1, rho=0.5, flag=True)
    # Without declarations, the overrides are applied as given (the behaviour before declarations existed).
    assert run.settings(TABLE, repeats=2.5) == {"repeats": 2.5, "rho": 0.5}
