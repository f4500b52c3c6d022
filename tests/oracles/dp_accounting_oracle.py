"""Google's dp-accounting as the privacy accountant's oracle (dp_side/accountant.py in ``.venv-dp-accounting/``)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

from tests.oracles.oracles import HERE, dp_accounting_python, run_script


@dataclass(frozen=True)
class DpAccounting:
    """dp-accounting's answer for T compositions of a (Poisson-sampled) Gaussian mechanism.

    ``rdp[k]`` is the composed RDP at ``orders[k]``; ``rdp_epsilon`` is min over orders of the library's
    conversion (see dp_side/accountant.py), reached at ``rdp_optimal_order``; ``pld_epsilon`` the PLD
    accountant's; ``gaussian_exact`` the analytic Gaussian epsilon (sampling probability 1 only).
    """

    version: str
    event: str
    rdp_epsilon: float
    rdp_optimal_order: float
    orders: list[float]
    rdp: list[float]
    pld_epsilon: float
    gaussian_exact: float | None


def dp_epsilon(
    noise_multiplier: float,
    sampling_probability: float,
    rounds: int,
    delta: float,
    *,
    orders: Sequence[float] | None = None,
    pld_discretization: float = 1e-4,
    neighboring: str = "add_or_remove_one",
) -> DpAccounting:
    """Epsilon of ``rounds`` compositions of a Gaussian mechanism with ``noise_multiplier``, Poisson-sampled
    with ``sampling_probability`` (1.0: every client every round), at ``delta``: RDP and PLD accountants."""
    args = [
        "--noise-multiplier",
        repr(float(noise_multiplier)),
        "--sampling-probability",
        repr(float(sampling_probability)),
        "--rounds",
        str(int(rounds)),
        "--delta",
        repr(float(delta)),
        "--pld-discretization",
        repr(float(pld_discretization)),
        "--neighboring",
        neighboring,
    ]
    if orders is not None:
        args += ["--orders", ",".join(repr(float(o)) for o in orders)]
    answer = json.loads(run_script(dp_accounting_python(), HERE / "dp_side" / "accountant.py", *args))
    return DpAccounting(
        version=answer["dp_accounting"],
        event=answer["event"],
        rdp_epsilon=float(answer["rdp"]["epsilon"]),
        rdp_optimal_order=answer["rdp"]["optimal_order"],
        orders=answer["rdp"]["orders"],
        rdp=[float(v) for v in answer["rdp"]["rdp"]],
        pld_epsilon=float(answer["pld"]["epsilon"]),
        gaussian_exact=answer["gaussian_exact"],
    )


def rdp_to_epsilon(orders: Sequence[float], rdp: Sequence[float], delta: float) -> float:
    """dp-accounting's RDP -> (epsilon, delta) conversion (compute_epsilon), restated in plain Python so a
    test can check a fedagg implementation against the same formula without the venv."""
    eps = []
    for a, r in zip(orders, rdp, strict=True):
        if r < 0 or delta**2 + math.expm1(-r) > 0:
            eps.append(0.0)
        elif a > 1.01:
            eps.append(r + math.log1p(-1 / a) - math.log(delta * a) / (a - 1))
        else:
            eps.append(math.inf)
    return max(0.0, min(eps))
