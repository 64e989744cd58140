"""Paper-agnostic machinery that two or more chapters use.

:mod:`~kdnb.core.runtime` (device, seeds, threads, allocator, profiles), :mod:`~kdnb.core.validation` (the checks at
every public boundary), :mod:`~kdnb.core.data`, :mod:`~kdnb.core.models`, :mod:`~kdnb.core.losses`,
:mod:`~kdnb.core.training` (the one fit loop, objectives, distillation, early-stopped teachers),
:mod:`~kdnb.core.sweeps` (grids of settings, power-law fits), :mod:`~kdnb.core.claims`, :mod:`~kdnb.core.plotting`,
:mod:`~kdnb.core.parameters` (chapter parameters), :mod:`~kdnb.core.progress` (progress bars shown only where someone
watches), :mod:`~kdnb.core.cache` (trained weights kept on disk between runs), :mod:`~kdnb.core.timing` and
:mod:`~kdnb.core.testing` (assertions for the tests of losses). Nothing here
imports :mod:`kdnb.kernels` or :mod:`kdnb.papers`.
"""
