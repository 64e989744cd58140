"""Neural tangent kernels and kernel methods, in float64 for linear algebra.

:mod:`~kdnb.kernels.empirical` (the empirical NTK of any torch module, three methods, FLOP counts),
:mod:`~kdnb.kernels.analytic` (infinite-width ReLU NTK and NNGP kernels, spectra on the sphere),
:mod:`~kdnb.kernels.linearized` (the linearized model, gradient descent in function space) and
:mod:`~kdnb.kernels.regression` (kernel regression with Cholesky and a stated jitter, nested prefixes, weight-change
norms and angles, closed-form gradient flow). Imports only :mod:`kdnb.core`.
"""
