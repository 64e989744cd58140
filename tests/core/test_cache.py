"""kdnb.core.cache: trained weights read back bit for bit, keyed by settings, versions and code."""

import types

import pytest
import torch
from torch import nn

from kdnb.core import cache, models


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("KDNB_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def trained_mlp(seed=0, steps=5):
    """A fresh MLP and the function that trains it (a few Adam steps on a fixed regression)."""
    model = models.MLP(3, [8], 1, generator=torch.Generator().manual_seed(seed))
    calls = []

    def fit():
        calls.append(1)
        g = torch.Generator().manual_seed(seed + 1)
        x, y = torch.randn(32, 3, generator=g), torch.randn(32, 1, generator=g)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(steps):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()

    return model, fit, calls


def test_a_hit_gives_the_trained_weights_bit_for_bit_without_training(cache_root):
    first, fit_first, calls_first = trained_mlp()
    assert cache.load_or_fit(first, fit_first, name="mlp", settings={"steps": 5}) is False
    assert calls_first == [1]
    second, fit_second, calls_second = trained_mlp()
    assert cache.load_or_fit(second, fit_second, name="mlp", settings={"steps": 5}) is True
    assert calls_second == []
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert len(list((cache_root / "mlp").glob("*.pt"))) == 1
    assert not list((cache_root / "mlp").glob("*.tmp"))


def test_other_settings_or_code_train_again(cache_root):
    model, fit, calls = trained_mlp()
    cache.load_or_fit(model, fit, name="mlp", settings={"steps": 5})
    model, fit, calls = trained_mlp(steps=6)
    assert cache.load_or_fit(model, fit, name="mlp", settings={"steps": 6}) is False
    assert cache.load_or_fit(model, fit, name="mlp", settings={"steps": 6}, code=[models]) is False
    assert calls == [1, 1]
    assert len(list((cache_root / "mlp").glob("*.pt"))) == 3


def test_key_ignores_key_order_and_follows_values_and_code():
    assert cache.cache_key({"a": 1, "b": [1, 2]}) == cache.cache_key({"b": (1, 2), "a": 1})
    assert cache.cache_key({"a": 1}) != cache.cache_key({"a": 2})
    assert cache.cache_key({"a": 1}, [models]) != cache.cache_key({"a": 1}, [cache])
    assert len(cache.cache_key({})) == 24


def test_a_corrupt_or_mismatched_entry_is_retrained_and_replaced(cache_root):
    model, fit, _ = trained_mlp()
    cache.load_or_fit(model, fit, name="mlp", settings={})
    (path,) = (cache_root / "mlp").glob("*.pt")
    path.write_bytes(b"not a checkpoint")
    again, fit_again, calls = trained_mlp()
    assert cache.load_or_fit(again, fit_again, name="mlp", settings={}) is False
    assert calls == [1]
    torch.save({"weight": torch.zeros(2)}, path)  # a state of another module: left untouched, then overwritten
    third, fit_third, calls = trained_mlp()
    initial = {k: v.clone() for k, v in third.state_dict().items()}
    seen = []
    def spy():
        seen.extend(torch.equal(initial[k], v) for k, v in third.state_dict().items())
        fit_third()
    assert cache.load_or_fit(third, spy, name="mlp", settings={}) is False
    assert seen and all(seen), "fit started from the module's own initial weights"
    assert set(torch.load(path, weights_only=True)) == set(initial)


def test_off_trains_every_time_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("KDNB_CACHE_DIR", "off")
    monkeypatch.chdir(tmp_path)
    assert cache.cache_dir() is None
    for _ in range(2):
        model, fit, calls = trained_mlp()
        assert cache.load_or_fit(model, fit, name="mlp", settings={}) is False
        assert calls == [1]
    assert not list(tmp_path.iterdir())


def test_default_folder_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("KDNB_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.cache_dir() == tmp_path / "kdnb"


@pytest.mark.parametrize("name", ["", "../up", "a/b", ".hidden", "x" * 101, 3])
def test_bad_name_is_refused(cache_root, name):
    model, fit, _ = trained_mlp()
    with pytest.raises(ValueError, match="name must be"):
        cache.load_or_fit(model, fit, name=name, settings={})


@pytest.mark.parametrize(("settings", "code", "match"), [
    ({"x": torch.zeros(1)}, (), "JSON"),
    ({"x": float("nan")}, (), "JSON"),
    ([1, 2], (), "mapping"),
    ({1: 2}, (), "mapping"),
    ({}, ["kdnb.core.models"], "modules"),
    ({}, [types.ModuleType("made_up")], "no source"),
])
def test_bad_settings_or_code_are_refused(settings, code, match):
    with pytest.raises(TypeError, match=match):
        cache.cache_key(settings, code)


def test_bad_module_or_fit_is_refused(cache_root):
    with pytest.raises(TypeError, match="module"):
        cache.load_or_fit("model", lambda: None, name="m", settings={})
    with pytest.raises(TypeError, match="fit"):
        cache.load_or_fit(nn.Linear(1, 1), None, name="m", settings={})
