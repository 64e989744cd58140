"""Claims: verdicts, assertion by profile, known failures, saving and loading."""

import json

import pytest

from kdnb.core.claims import ClaimError, ClaimSet, claims_directory, load_claims


def test_numeric_and_boolean_claims(tmp_path):
    claims = ClaimSet("ch", profile="default", directory=tmp_path)
    assert claims.check("in", "s", 0.5, low=0.4, high=0.6).verdict == "reproduced"
    assert claims.check("low", "s", 0.3, low=0.4).holds is False
    assert claims.check("high", "s", 0.3, high=0.4).expected == "≤ 0.4"
    assert claims.check("bool", "s", True, expected=True).measured_text == "yes"
    assert claims.check("nan", "s", float("nan"), low=0.0).holds is False
    table = claims.table()
    assert len(table) == 5 and list(table.columns)[-1] == "verdict"


def test_report_asserts_at_default_but_not_at_smoke(tmp_path):
    failing = ClaimSet("ch", profile="default", directory=tmp_path)
    failing.check("bad", "s", 0.1, low=0.5)
    with pytest.raises(ClaimError, match="bad: measured 0.1, expected ≥ 0.5"):
        failing.report()
    assert (tmp_path / "ch.default.json").is_file()  # saved before raising, for the scorecard

    smoke = ClaimSet("ch", profile="smoke", directory=tmp_path)
    smoke.check("bad", "s", 0.1, low=0.5)
    assert len(smoke.report()) == 1


def test_known_failures_are_reported_not_raised(tmp_path):
    claims = ClaimSet("ch", profile="full", directory=tmp_path)
    claims.check("known", "s", 0.1, low=0.5, known_failure="too small here")
    claims.check("surprise", "s", 0.9, low=0.5, known_failure="used to fail")
    claims.report()
    loaded = {c.id: c for c in load_claims(tmp_path, profile="full")}
    assert loaded["known"].verdict == "not reproduced (known)"
    assert loaded["surprise"].verdict == "reproduced (expected to fail)"


def test_save_load_round_trip_is_per_profile(tmp_path):
    for profile in ("smoke", "default"):
        c = ClaimSet("ch01", profile=profile, directory=tmp_path)
        c.check("x", "statement", 1.0 if profile == "default" else 2.0, low=0.0)
        c.save()
    payload = json.loads((tmp_path / "ch01.default.json").read_text())
    assert payload["profile"] == "default" and payload["claims"][0]["measured"] == 1.0
    assert [c.measured for c in load_claims(tmp_path, "smoke")] == [2.0]
    with pytest.raises(ValueError, match="profile must be one of"):
        load_claims(tmp_path, "huge")


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(claim_id=""), ValueError, "claim_id must be a non-empty string"),
    (dict(statement=" "), ValueError, "statement must be"),
    (dict(low=None), ValueError, "needs low, high or both"),
    (dict(expected=True), ValueError, "either expected"),
    (dict(measured=True), TypeError, "measured is a bool"),
])
def test_bad_claims(tmp_path, kwargs, error, message):
    args = dict(claim_id="c", statement="s", measured=1.0, low=0.0)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        ClaimSet("ch", profile="smoke", directory=tmp_path).check(args.pop("claim_id"), args.pop("statement"),
                                                                  args.pop("measured"), **args)


def test_duplicate_ids_and_empty_report(tmp_path):
    claims = ClaimSet("ch", profile="smoke", directory=tmp_path)
    with pytest.raises(ValueError, match="no claims were recorded"):
        claims.report()
    claims.check("c", "s", 1.0, low=0.0)
    with pytest.raises(ValueError, match="already recorded"):
        claims.check("c", "s", 1.0, low=0.0)


def test_claims_directory_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("KDNB_CLAIMS_DIR", str(tmp_path / "env"))
    assert claims_directory() == (tmp_path / "env").resolve()
    monkeypatch.delenv("KDNB_CLAIMS_DIR")
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "_toc.yml").write_text("root: intro\n")
    (tmp_path / "book" / "notebooks").mkdir()
    assert claims_directory(tmp_path / "book" / "notebooks") == tmp_path / "book" / "_build" / "claims"
