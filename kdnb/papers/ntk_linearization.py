r"""Wide networks as linear models: the drivers of chapter 2.

Jaehoon Lee, Lechao Xiao, Samuel S. Schoenholz, Yasaman Bahri, Roman Novak, Jascha Sohl-Dickstein and Jeffrey
Pennington. *Wide Neural Networks of Any Depth Evolve as Linear Models Under Gradient Descent.* Advances in Neural
Information Processing Systems 32, 2019. arXiv:1902.06720. With the kernel of Jacot, Gabriel and Hongler (NeurIPS
2018) and its ReLU closed forms (Arora et al. 2019).
"""

from __future__ import annotations

__all__: list[str] = []
