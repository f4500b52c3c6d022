"""The privacy spent by repeated Gaussian mechanisms, as Rényi differential privacy converted to (epsilon, delta).

Every collaborator takes part in every round (no sampling), so each round is a Gaussian mechanism with noise
multiplier z, of Rényi DP ``alpha / (2 z^2)`` at every order alpha; rounds compose by addition. The conversion to
(epsilon, delta) is the one of Google's dp-accounting RdpAccountant (Canonne, Kamath and Steinke, 2020,
Proposition 12), over the same orders, so the reported epsilon equals that library's for the same parameters (a
test checks it against the library, run in its own environment).
"""

from __future__ import annotations

import math

RDP_ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024])


def gaussian_epsilon(
    noise_multiplier: float, rounds: int, delta: float, orders: tuple[float, ...] = RDP_ORDERS
) -> float:
    """Epsilon (for ``delta``) after ``rounds`` Gaussian mechanisms of ``noise_multiplier``; inf without noise."""
    if rounds == 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    best = math.inf
    for order in orders:
        rdp = rounds * order / (2 * noise_multiplier**2)
        if delta**2 + math.expm1(-rdp) > 0:
            return 0.0
        if order > 1.01:
            best = min(best, rdp + math.log1p(-1 / order) - math.log(delta * order) / (order - 1))
    return max(0.0, best)
