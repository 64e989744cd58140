"""A disk cache of trained weights, so that a chapter rerun does not retrain the teachers it trained before.

A trained module is stored under ``cache_dir() / name / <key>.pt``, where ``<key>`` hashes the settings the caller
names (everything the training depends on: data, seed, steps, learning rate, device), the versions of torch and kdnb,
and the source of the modules whose code trains it. Change any of these and the weights are trained again: a stale
entry is never read, it is simply no longer found. The weights are stored exactly (``torch.save`` of the state
dict), so a module loaded from the cache equals, bit for bit, the one its training produced; a chapter gives the
same numbers whether its teacher came from the cache or not.

The folder is ``$KDNB_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/kdnb``, else ``~/.cache/kdnb``. Delete it to
start afresh; ``KDNB_CACHE_DIR=off`` turns the cache off (every call trains).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

__all__ = ["cache_dir", "cache_key", "check_entry_name", "load_or_fit"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def cache_dir() -> Path | None:
    """The cache's folder, or None when ``KDNB_CACHE_DIR=off``.

    Returns
    -------
    pathlib.Path or None
        ``$KDNB_CACHE_DIR``, else ``$XDG_CACHE_HOME/kdnb``, else ``~/.cache/kdnb``; not created here.
    """
    configured = os.environ.get("KDNB_CACHE_DIR")
    if configured is not None and configured.strip().lower() == "off":
        return None
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "kdnb"


def check_entry_name(name, argument: str = "name") -> str:
    """Return ``name`` after checking it can name a folder of the cache.

    Parameters
    ----------
    name : str
        Letters, digits, ``_``, ``.`` and ``-``, 1 to 100 characters, starting with a letter or digit (so no path
        separator, no hidden folder, no ``..``).
    argument : str, default "name"
        The argument's name, used in the error message.

    Returns
    -------
    str
        ``name``.

    Raises
    ------
    ValueError
        If ``name`` is not a str of that form.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{argument} must be 1 to 100 letters, digits, '_', '.' or '-', starting with a letter or "
                         f"digit; got {name!r}")
    return name


def cache_key(settings: Mapping, code: Sequence[ModuleType] = ()) -> str:
    """A hex digest of ``settings``, the torch and kdnb versions and the source of the ``code`` modules.

    Parameters
    ----------
    settings : mapping of str to JSON values
        Everything the cached result depends on besides code: numbers, strings, booleans, None, and lists or
        mappings of them. Tuples are taken as lists. The order of the keys does not matter.
    code : sequence of modules, default ()
        Modules whose source the result depends on (the module that defines the training loop and the model, say):
        editing any of them changes the key.

    Returns
    -------
    str
        24 hex digits.

    Raises
    ------
    TypeError
        If ``settings`` is not a mapping with string keys, holds a value JSON cannot write (a tensor, a float
        NaN, an object), or ``code`` holds something that is not a module with a source file.
    """
    if not isinstance(settings, Mapping) or not all(isinstance(k, str) for k in settings):
        raise TypeError(f"settings must be a mapping with str keys, got {type(settings).__name__}")
    try:
        text = json.dumps(dict(settings), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(f"settings must hold JSON values only (numbers, strings, lists, mappings): {error}") from None
    from kdnb import __version__  # here, not at the top: kdnb's __init__ imports kdnb.core

    digest = hashlib.sha256()
    digest.update(text.encode())
    digest.update(f"torch {torch.__version__}; kdnb {__version__}".encode())
    for module in code:
        if not isinstance(module, ModuleType):
            raise TypeError(f"code must hold modules, got {type(module).__name__}")
        try:
            digest.update(inspect.getsource(module).encode())
        except (OSError, TypeError):
            raise TypeError(f"code: module {module.__name__} has no source file to hash") from None
    return digest.hexdigest()[:24]


def load_or_fit(module: nn.Module, fit: Callable[[], object], *, name: str, settings: Mapping,
                code: Sequence[ModuleType] = ()) -> bool:
    """Load ``module``'s weights from the cache, or call ``fit()`` to train it in place and store the result.

    Parameters
    ----------
    module : torch.nn.Module
        The freshly initialised module; its parameters and buffers are overwritten on a hit, trained by ``fit`` on a
        miss.
    fit : callable
        Called with no argument on a miss; trains ``module`` in place (its return value is ignored). On a hit it
        is not called, so it must not draw from any random generator that other work shares.
    name : str
        The entry's folder under :func:`cache_dir`, e.g. ``"gan_compression_vem-image-teacher"``: letters, digits,
        ``_``, ``.`` and ``-``, at most 100 characters, starting with a letter or digit.
    settings : mapping
        Everything the training depends on besides code and the module's device, which is added (see
        :func:`cache_key`). The caller owns its completeness: a setting left out is a stale result read back.
    code : sequence of modules, default ()
        Modules whose source the training depends on (see :func:`cache_key`).

    Returns
    -------
    bool
        True if the weights came from the cache, False if ``fit`` trained them.

    Raises
    ------
    TypeError
        If ``module`` is not an ``nn.Module`` or ``fit`` is not callable, or from :func:`cache_key`.
    ValueError
        If ``name`` is not of the form above.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if not callable(fit):
        raise TypeError(f"fit must be callable, got {type(fit).__name__}")
    name = check_entry_name(name)
    tensors = [*module.parameters(), *module.buffers()]
    # Training on another device gives other weights: the module's device is part of the key.
    device = str(tensors[0].device) if tensors else "none"
    key = cache_key({"settings": dict(settings), "device": device}, code)
    root = cache_dir()
    path = None if root is None else root / name / f"{key}.pt"
    if path is not None and path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a truncated or foreign file: train again and overwrite it
            state = None
        expected = module.state_dict()
        # Checked before anything is copied, so that a mismatched entry leaves the module as initialised for fit.
        if (isinstance(state, dict) and state.keys() == expected.keys()
                and all(state[k].shape == expected[k].shape and state[k].dtype == expected[k].dtype
                        for k in expected)):
            module.load_state_dict(state)
            return True
    fit()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        # Written to a temporary file and renamed, so that a run killed mid-write leaves no partial entry.
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(handle)
        try:
            torch.save(state, temporary)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
    return False
