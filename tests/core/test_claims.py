"""Claims, checks and records: verdicts, assertion by profile, known failures, intervals, saving and loading."""

import json

import numpy as np
import pytest

from kdnb.core.claims import (
    Claim,
    ClaimError,
    ClaimSet,
    bootstrap_interval,
    claims_directory,
    load_claims,
)

SRC = dict(source="Fig. 1")


def claim(claims, claim_id, measured, **kwargs):
    return claims.claim(claim_id, "s", measured, **{**SRC, "threshold": "paper", **kwargs})


def test_claim_verdicts_for_numbers_and_bools(tmp_path):
    claims = ClaimSet("ch", profile="default", directory=tmp_path)
    assert claim(claims, "in", 0.5, low=0.4, high=0.6).verdict == "reproduced"
    assert claim(claims, "edge", 0.4, low=0.4, high=0.6).holds is True  # bounds are inclusive
    assert claim(claims, "low", 0.3, low=0.4).holds is False
    assert claim(claims, "high", 0.3, high=0.4).expected == "≤ 0.4"
    assert claim(claims, "bool", True, expected=True).measured_text == "yes"
    assert claim(claims, "bool-no", False, expected=True).verdict == "not reproduced"
    assert claim(claims, "nan", float("nan"), low=0.0).holds is False
    assert claim(claims, "numpy", np.float32(0.5), low=0.4).measured == 0.5
    entry = claims.claims[0]
    assert (entry.kind, entry.source, entry.threshold, entry.interval, entry.n_samples) == (
        "claim", "Fig. 1", "paper", None, None)


def test_check_verdicts_and_threshold(tmp_path):
    claims = ClaimSet("ch", profile="default", directory=tmp_path)
    ok = claims.check("identity", "s", 1e-12, high=1e-9, **SRC)
    bad = claims.check("broken", "s", 1e-3, high=1e-9, threshold="calibrated", **SRC)
    assert (ok.kind, ok.verdict, ok.holds, ok.threshold) == ("check", "holds", True, "exact")
    assert (bad.verdict, bad.holds, bad.threshold) == ("fails", False, "calibrated")
    assert claims.check("yes", "s", True, expected=True, **SRC).verdict == "holds"


def test_records_are_shown_never_asserted(tmp_path):
    claims = ClaimSet("ch", profile="full", directory=tmp_path)
    outside = claims.record("outside", "s", 0.1, low=10.0, source="the book's own")
    bare = claims.record("bare", "s", float("nan"), source="the book's own")
    inside = claims.record("inside", "s", [1.0, 2.0, 3.0], high=5.0, source="the book's own")
    assert {outside.verdict, bare.verdict, inside.verdict} == {"recorded"}
    assert (outside.holds, bare.holds, inside.holds) == (False, None, True)
    assert (outside.expected, bare.expected, outside.threshold) == ("≥ 10", "—", None)
    table = claims.report().table()  # a record outside its reference range does not raise, even at "full"
    assert list(table["verdict"]) == ["recorded"] * 3
    assert table.loc[("record (not asserted)", "outside"), "expected"] == "reference ≥ 10"


def test_report_asserts_claims_and_checks_at_default_but_not_at_smoke(tmp_path):
    failing = ClaimSet("ch", profile="default", directory=tmp_path)
    claim(failing, "bad", 0.1, low=0.5)
    failing.check("bad-check", "s", 0.2, high=0.1, **SRC)
    failing.record("bad-record", "s", 0.3, high=0.1, **SRC)
    with pytest.raises(ClaimError, match="1 claim\\(s\\) and 1 check\\(s\\) of ch") as error:
        failing.report()
    message = str(error.value)
    assert "claim bad: measured 0.1, expected ≥ 0.5" in message
    assert "check bad-check: measured 0.2, expected ≤ 0.1" in message
    assert "bad-record" not in message
    assert (tmp_path / "ch.default.json").is_file()  # saved before raising, for the scorecard

    only_check = ClaimSet("ch2", profile="default", directory=tmp_path)
    only_check.check("bad-check", "s", 0.2, high=0.1, **SRC)
    with pytest.raises(ClaimError, match="1 check\\(s\\) of ch2"):
        only_check.report()

    smoke = ClaimSet("ch", profile="smoke", directory=tmp_path)
    claim(smoke, "bad", 0.1, low=0.5)
    smoke.check("bad-check", "s", 0.2, high=0.1, **SRC)
    assert len(smoke.report()) == 2


def test_known_failures_are_reported_not_raised(tmp_path):
    claims = ClaimSet("ch", profile="full", directory=tmp_path)
    claim(claims, "known", 0.1, low=0.5, known_failure="too small here")
    claim(claims, "surprise", 0.9, low=0.5, known_failure="used to fail")
    claims.report()
    loaded = {c.id: c for c in load_claims(tmp_path, profile="full")}
    assert loaded["known"].verdict == "not reproduced (known)"
    assert loaded["surprise"].verdict == "reproduced (expected to fail)"


def test_table_puts_claims_then_checks_then_records(tmp_path):
    claims = ClaimSet("ch", profile="smoke", directory=tmp_path)
    claims.record("r", "s", 1.0, **SRC)
    claims.check("k", "s", 0.0, high=0.0, **SRC)
    claim(claims, "c1", 1.0, low=0.0)
    claim(claims, "c2", [1.0, 2.0], low=0.0)
    table = claims.table()
    assert [i for _, i in table.index] == ["c1", "c2", "k", "r"]
    assert [k for k, _ in table.index] == ["claim of the paper"] * 2 + ["consistency check", "record (not asserted)"]
    assert list(table.columns) == ["statement", "source", "threshold", "measured", "expected", "verdict"]
    assert table.loc[("claim of the paper", "c2"), "measured"].startswith("1.5 [")


def test_samples_are_decided_on_the_interval_not_the_mean(tmp_path):
    claims = ClaimSet("ch", profile="default", directory=tmp_path)
    noisy = [0.0, 1.0, 0.0, 1.0, 0.2, 0.8]  # mean 0.5, interval reaches well below 0.4 and above 0.6
    mean_passes = claim(claims, "mean-passes", noisy, low=0.4)
    assert mean_passes.measured == pytest.approx(0.5) and mean_passes.interval[0] < 0.4
    assert mean_passes.holds is False and mean_passes.verdict == "not reproduced"
    assert claim(claims, "mean-passes-high", noisy, high=0.6).holds is False
    assert claim(claims, "mean-passes-both", noisy, low=0.4, high=0.6).holds is False

    tight = [0.50, 0.51, 0.49, 0.50, 0.52, 0.48]  # mean 0.5, interval inside [0.45, 0.55]
    lo, hi = bootstrap_interval(tight)
    assert 0.45 < lo < 0.5 < hi < 0.55
    assert claim(claims, "tight-low", tight, low=0.45).holds is True
    assert claim(claims, "tight-high", tight, high=0.55).holds is True
    assert claim(claims, "tight-both", tight, low=0.45, high=0.55).holds is True
    # a bound between the interval's lower end and the mean: the mean passes, the interval does not
    assert claim(claims, "between-lo-and-mean", tight, low=(lo + 0.5) / 2).holds is False
    check = claims.check("check-samples", "s", tight, low=0.45, high=0.55, **SRC)
    assert check.verdict == "holds" and check.n_samples == 6 and check.interval == (lo, hi)
    assert claims.check("check-fails", "s", tight, high=(hi + 0.5) / 2, **SRC).verdict == "fails"


def test_interval_ends_bound_a_passing_claim_exactly(tmp_path):
    claims = ClaimSet("ch", profile="default", directory=tmp_path)
    samples = np.random.default_rng(3).normal(1.0, 0.2, size=12)
    lo, hi = bootstrap_interval(samples)
    assert claim(claims, "at-lo", samples, low=lo).holds is True
    assert claim(claims, "above-lo", samples, low=np.nextafter(lo, np.inf)).holds is False
    assert claim(claims, "at-hi", samples, high=hi).holds is True
    assert claim(claims, "below-hi", samples, high=np.nextafter(hi, -np.inf)).holds is False


def test_bootstrap_is_deterministic_and_degenerate_samples_do_not_crash(tmp_path):
    samples = np.random.default_rng(7).exponential(size=20)
    assert bootstrap_interval(samples) == bootstrap_interval(list(samples)) == bootstrap_interval(samples.copy())
    assert bootstrap_interval(samples, seed=1) != bootstrap_interval(samples)
    assert bootstrap_interval([0.3, 0.3, 0.3]) == (0.3, 0.3)
    claims = ClaimSet("ch", profile="default", directory=tmp_path)
    flat = claim(claims, "flat", [2.0, 2.0], low=2.0, high=2.0)
    assert (flat.interval, flat.holds, flat.measured_text) == ((2.0, 2.0), True, "2 [2, 2]")
    two = bootstrap_interval([1.0, 2.0])  # the smallest sample: an interval inside the data's range
    assert 1.0 <= two[0] <= 1.5 <= two[1] <= 2.0


def test_bootstrap_matches_a_plain_percentile_bootstrap_and_the_normal_interval():
    rng = np.random.default_rng(11)
    samples = rng.normal(3.0, 2.0, size=40)
    lo, hi = bootstrap_interval(samples)
    # a percentile bootstrap written from scratch, with a different generator
    means = rng.choice(samples, size=(20000, samples.size), replace=True).mean(axis=1)
    p_lo, p_hi = np.quantile(means, [0.025, 0.975])
    width = p_hi - p_lo
    assert abs(lo - p_lo) < 0.1 * width and abs(hi - p_hi) < 0.1 * width
    # and the normal-theory interval mean ± 1.96 sd / √n
    half = 1.96 * samples.std(ddof=1) / np.sqrt(samples.size)
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.2)
    assert (lo + hi) / 2 == pytest.approx(samples.mean(), abs=0.2 * half)


def test_save_load_round_trip_keeps_every_field(tmp_path):
    claims = ClaimSet("ch01", profile="default", directory=tmp_path)
    claim(claims, "x", 1.0, low=0.0, known_failure=None, note="n")
    claims.claim("samples", "s", [1.0, 2.0, 4.0], low=0.0, source="Theorem 1", threshold="calibrated")
    claims.check("c", "s", True, expected=True, source="Sec. 3")
    claims.record("r", "s", float("nan"), high=1.0, source="the book's own")
    claims.save()
    payload = json.loads((tmp_path / "ch01.default.json").read_text())
    saved = payload["claims"][1]
    assert saved["kind"] == "claim" and saved["threshold"] == "calibrated" and saved["source"] == "Theorem 1"
    assert saved["n_samples"] == 3 and saved["measured"] == pytest.approx(7 / 3) and len(saved["interval"]) == 2
    old_fields = ["chapter", "id", "statement", "measured", "expected", "holds", "verdict", "profile",
                  "known_failure", "note"]
    assert list(payload["claims"][0])[:len(old_fields)] == old_fields
    loaded = load_claims(tmp_path, "default")
    assert [c.kind for c in loaded] == ["claim", "claim", "check", "record"]
    for before, after in zip(claims.claims[:3], loaded[:3]):
        assert before == after
    assert loaded[1].interval == claims.claims[1].interval and isinstance(loaded[1].interval, tuple)
    assert np.isnan(loaded[3].measured) and loaded[3].verdict == "recorded"


def test_load_reads_files_written_before_kinds_existed(tmp_path):
    old = {"chapter": "ch", "id": "x", "statement": "s", "measured": 1.0, "expected": "≥ 0", "holds": True,
           "verdict": "reproduced", "profile": "default", "known_failure": None, "note": ""}
    (tmp_path / "ch.default.json").write_text(json.dumps({"chapter": "ch", "profile": "default", "claims": [old]}))
    (entry,) = load_claims(tmp_path, "default")
    assert isinstance(entry, Claim) and entry.kind == "claim" and entry.interval is None and entry.source == ""


def test_save_load_round_trip_is_per_profile(tmp_path):
    for profile in ("smoke", "default"):
        c = ClaimSet("ch01", profile=profile, directory=tmp_path)
        claim(c, "x", 1.0 if profile == "default" else 2.0, low=0.0)
        c.save()
    payload = json.loads((tmp_path / "ch01.default.json").read_text())
    assert payload["profile"] == "default" and payload["claims"][0]["measured"] == 1.0
    assert [c.measured for c in load_claims(tmp_path, "smoke")] == [2.0]
    with pytest.raises(ValueError, match="profile must be one of"):
        load_claims(tmp_path, "huge")


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(claim_id=""), ValueError, "claim_id must be a non-empty string"),
    (dict(statement=" "), ValueError, "statement must"),
    (dict(source=""), ValueError, "source must name"),
    (dict(source=None), ValueError, "source must name"),
    (dict(threshold="exact"), ValueError, "threshold of a claim must be one of"),
    (dict(threshold=None), ValueError, "threshold of a claim must be one of"),
    (dict(low=None), ValueError, "needs low, high or both"),
    (dict(low=float("nan")), ValueError, "low must not be NaN"),
    (dict(low="0"), TypeError, "low must be a real number"),
    (dict(high=True), TypeError, "high must be a real number"),
    (dict(low=1.0, high=0.0), ValueError, "low must be <= high"),
    (dict(expected=True), ValueError, "either expected"),
    (dict(low=None, expected=1), TypeError, "expected must be a bool"),
    (dict(low=None, expected=True, measured=[True, False]), TypeError, "measured must be a bool when expected is given"),
    (dict(measured=True), TypeError, "measured is a bool"),
    (dict(measured="1.0"), TypeError, "measured must be a number"),
    (dict(measured=[1.0]), ValueError, "at least 2"),
    (dict(measured=[]), ValueError, "at least 2"),
    (dict(measured=[1.0, float("nan")]), ValueError, "measured must be finite"),
    (dict(measured=[1.0, float("inf")]), ValueError, "measured must be finite"),
    (dict(measured=[[1.0, 2.0]]), ValueError, "must be 1-D"),
    (dict(measured=[True, False]), TypeError, "real numbers"),
    (dict(known_failure=" "), ValueError, "known_failure must be"),
    (dict(note=None), TypeError, "note must be a string"),
])
def test_bad_claims(tmp_path, kwargs, error, message):
    args = dict(claim_id="c", statement="s", measured=1.0, low=0.0, source="Fig. 1", threshold="paper")
    args.update(kwargs)
    with pytest.raises(error, match=message):
        ClaimSet("ch", profile="smoke", directory=tmp_path).claim(args.pop("claim_id"), args.pop("statement"),
                                                                  args.pop("measured"), **args)


def test_bad_checks_and_records(tmp_path):
    claims = ClaimSet("ch", profile="smoke", directory=tmp_path)
    with pytest.raises(ValueError, match="threshold of a check must be one of"):
        claims.check("c", "s", 0.0, high=0.0, source="x", threshold="paper")
    with pytest.raises(ValueError, match="a numeric check needs low, high or both"):
        claims.check("c", "s", 0.0, source="x")
    with pytest.raises(TypeError, match="known_failure"):
        claims.check("c", "s", 0.0, high=0.0, source="x", known_failure="no")
    with pytest.raises(TypeError, match="threshold"):
        claims.record("r", "s", 0.0, source="x", threshold="paper")
    with pytest.raises(TypeError, match="source"):
        claims.record("r", "s", 0.0)
    with pytest.raises(TypeError, match="low must be a real number"):
        claims.record("r", "s", 0.0, source="x", low="big")
    with pytest.raises(ValueError, match="at least 2"):
        claims.record("r", "s", [0.0], source="x")
    assert claims.claims == []


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(confidence=1.0), ValueError, "confidence must be"),
    (dict(n_resamples=10), ValueError, "n_resamples must be >= 100"),
    (dict(n_resamples=1e4), TypeError, "n_resamples must be an int"),
    (dict(seed=-1), ValueError, "seed must be >= 0"),
])
def test_bad_bootstrap_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        bootstrap_interval([1.0, 2.0, 3.0], **kwargs)
    with pytest.raises(TypeError, match="got a string"):
        bootstrap_interval("123")


def test_duplicate_ids_and_empty_report(tmp_path):
    claims = ClaimSet("ch", profile="smoke", directory=tmp_path)
    with pytest.raises(ValueError, match="no claims were recorded"):
        claims.report()
    claim(claims, "c", 1.0, low=0.0)
    with pytest.raises(ValueError, match="already recorded"):
        claims.record("c", "s", 1.0, source="x")


def test_claims_directory_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("KDNB_CLAIMS_DIR", str(tmp_path / "env"))
    assert claims_directory() == (tmp_path / "env").resolve()
    monkeypatch.delenv("KDNB_CLAIMS_DIR")
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "_toc.yml").write_text("root: intro\n")
    (tmp_path / "book" / "notebooks").mkdir()
    assert claims_directory(tmp_path / "book" / "notebooks") == tmp_path / "book" / "_build" / "claims"


def test_a_yes_no_statement_needs_a_bool_and_a_record_may_show_one(tmp_path):
    claims = ClaimSet("ch", profile="default", directory=tmp_path)
    for not_a_bool in (float("nan"), 0.2, 1, "yes"):
        with pytest.raises(TypeError, match="measured must be a bool when expected is given"):
            claims.claim(f"c{not_a_bool!r}", "s", not_a_bool, expected=True, source="x", threshold="paper")
    assert claims.claim("np-bool", "s", np.bool_(False), expected=False, source="x",
                        threshold="paper").verdict == "reproduced"
    shown = claims.record("flag", "s", True, source="the book's own")
    assert shown.verdict == "recorded" and shown.measured is True and shown.holds is None


@pytest.mark.parametrize("measured", [None, {"a": 1.0}, {1.0, 2.0}, (v for v in (1.0, 2.0)), 1 + 2j,
                                      np.array(1 + 2j), object()])
def test_a_numeric_measured_of_a_wrong_kind_is_named(tmp_path, measured):
    claims = ClaimSet("ch", profile="smoke", directory=tmp_path)
    with pytest.raises(TypeError, match="measured must be a real number, a bool .* or a 1-D sequence"):
        claim(claims, "c", measured, low=0.0)
    with pytest.raises(TypeError, match="measured must be a real number"):
        claims.record("r", "s", measured, source="x")
    assert claims.claims == []


def test_zero_dimensional_numbers_are_still_accepted(tmp_path):
    import torch

    claims = ClaimSet("ch", profile="smoke", directory=tmp_path)
    values = [np.float32(0.25), np.array(0.25), np.int64(3), torch.tensor(0.25, dtype=torch.float64),
              torch.tensor(3)]
    for i, value in enumerate(values):
        entry = claim(claims, f"c{i}", value, low=0.0)
        assert type(entry.measured) is float and entry.measured == float(value) and entry.holds is True
    with pytest.raises(TypeError, match="measured must be a real number"):
        claim(claims, "bool-tensor", torch.tensor(True), low=0.0)
    with pytest.raises(TypeError, match="measured must be 1-D|measured must be a 1-D sequence"):
        claim(claims, "ragged", [[1.0], [1.0, 2.0]], low=0.0)


def test_samples_whose_mean_overflows_are_refused_naming_measured(tmp_path):
    claims = ClaimSet("ch", profile="smoke", directory=tmp_path)
    for huge in ([1e308, 1.5e308], [1e308, 1e308], [1e308, -1e308, 1e308]):
        assert np.isfinite(huge).all()
        with pytest.raises(ValueError, match="measured is too large for a mean in float64"):
            claim(claims, "c", huge, low=0.0)
        with pytest.raises(ValueError, match="samples is too large"):
            bootstrap_interval(huge)
    big = claim(claims, "big", [1e300, 2e300, 4e300], low=0.0)  # large but summable: kept
    assert big.measured == pytest.approx(7e300 / 3) and all(np.isfinite(big.interval))


def test_load_claims_names_the_file_and_the_bad_key(tmp_path):
    claims = ClaimSet("ch", profile="default", directory=tmp_path)
    claim(claims, "x", 1.0, low=0.0)
    path = claims.save()
    payload = json.loads(path.read_text())
    payload["claims"][0]["colour"] = "red"
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=r"ch\.default\.json: claims\[0\] has unknown key\(s\) \['colour'\]"):
        load_claims(tmp_path, "default")
    del payload["claims"][0]["colour"], payload["claims"][0]["verdict"]
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=r"ch\.default\.json: claims\[0\] lacks the key\(s\) \['verdict'\]"):
        load_claims(tmp_path, "default")
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="is not a claims file"):
        load_claims(tmp_path, "default")


def test_non_finite_records_are_written_as_python_json_tokens(tmp_path):
    claims = ClaimSet("ch", profile="default", directory=tmp_path)
    claims.record("nan", "s", float("nan"), source="x")
    claims.record("inf", "s", float("inf"), source="x")
    claim(claims, "finite", 0.1, low=0.0)
    text = claims.save().read_text()
    assert '"measured": NaN' in text and '"measured": Infinity' in text and '"measured": 0.1' in text
    with pytest.raises(ValueError):
        json.loads(text, parse_constant=lambda token: (_ for _ in ()).throw(ValueError(token)))  # not strict JSON
    nan, inf, finite = load_claims(tmp_path, "default")
    assert np.isnan(nan.measured) and inf.measured == float("inf") and finite.measured == 0.1


def test_report_shows_every_entry_whole_with_intervals_and_reasons(tmp_path):
    from kdnb.core.claims import entries_html

    long_statement = "A statement far longer than any column width, " * 6 + "ending here."
    claims = ClaimSet("ch", profile="default", directory=tmp_path)
    claim(claims, "known", 0.1, low=0.5, known_failure="too small here")
    claims.claim("long", long_statement, [0.6, 0.7, 0.8], low=0.5, source="Fig. 2", threshold="paper")
    claims.check("math", "the identity $\\|x\\|_2 = 1$ holds", 0.0, high=1e-9, **SRC)
    claims.record("rec", "s <b>", 0.3, **SRC)
    report = claims.report()
    html = report._repr_html_()
    assert long_statement in html and "…" not in html  # nothing cut
    assert "1 of 2 claims reproduced" in html
    assert html.index("Claims of the paper") < html.index("Consistency checks") < html.index("Records")
    assert "too small here" in html and "95% interval" in html and "3 repeats" in html
    assert '<span class="math notranslate nohighlight">\\(\\|x\\|_2 = 1\\)</span>' in html
    assert "s &lt;b&gt;" in html  # text is escaped
    assert "known:" in repr(report).replace("[claim] known:", "known:")
    assert entries_html(report.entries, "record").count("<tr id=") == 1
    assert entries_html([], "claim") == ""
    with pytest.raises(ValueError, match="kind must be one of"):
        entries_html(report.entries, "claims")
