"""Epsilon of a repeated (sub)sampled Gaussian mechanism by Google's dp-accounting (0.6.0): an oracle.

Runs only with the dp-accounting venv's python (``scripts/oracle-venv dp-accounting``).
Usage::

    accountant.py --noise-multiplier Z --sampling-probability Q --rounds T --delta D
                  [--orders 1.5,2,...] [--pld-discretization 1e-4] [--neighboring add_or_remove_one]

prints one JSON object on stdout::

    {"dp_accounting": version, "event": repr of the DpEvent,
     "rdp": {"epsilon", "optimal_order", "orders": [...], "rdp": [...],   # rdp[k] at orders[k], after T
             "delta_used": D},
     "pld": {"epsilon", "value_discretization_interval"},
     "gaussian_exact": epsilon or null}

The event (one per round, composed T times): Q == 1 -> ``SelfComposedDpEvent(GaussianDpEvent(Z), T)``;
0 <= Q < 1 -> ``SelfComposedDpEvent(PoissonSampledDpEvent(Q, GaussianDpEvent(Z)), T)``. Z is the noise std
divided by the L2 sensitivity (fedagg: the std of the noise on the *sum* of clipped updates / C). Paths
below are relative to ``site-packages/dp_accounting/``.

RDP (``rdp.RdpAccountant(orders, neighboring_relation)``, rdp/rdp_privacy_accountant.py:980-1220):

* orders: ``--orders`` or DEFAULT_RDP_ORDERS (rdp_privacy_accountant.py:973-977): 1.1, 1.2, ..., 10.9
  (``1 + x / 10`` for x = 1..99), 11, 12, ..., 63, 128, 256, 512, 1024 — 156 orders.
* composition (_maybe_compose, lines 1000-1157): SelfComposedDpEvent multiplies ``count``; a
  GaussianDpEvent adds ``count * alpha / (2 Z**2)`` per order (q = 1 branch of
  _compute_rdp_poisson_subsampled_gaussian, lines 360-397: ``alpha / (2 * noise_multiplier**2)``); a
  PoissonSampledDpEvent of a Gaussian adds ``count * log(A_alpha) / (alpha - 1)`` (line 395) with
  log A_alpha from _compute_log_a_int (integer alpha, lines 66-78: log sum_i C(alpha, i) q^i
  (1 - q)^(alpha - i) exp((i^2 - i) / (2 Z^2))) or _compute_log_a_frac (fractional alpha, lines 84-134,
  Mironov et al. 2019 §3.3; an order that does not converge in 1000 steps becomes inf). Q = 0 -> 0;
  Z = 0 -> inf.
* epsilon (compute_epsilon, lines 218-277), per order: r < 0 -> 0; ``delta**2 + expm1(-r) > 0`` -> 0;
  alpha > 1.01 -> ``r + log1p(-1/alpha) - log(delta * alpha) / (alpha - 1)`` (Proposition 12 of
  Canonne-Kamath-Steinke 2020 / Asoodeh et al., not Mironov's ``r + log(1/delta)/(alpha - 1)``);
  otherwise inf; epsilon = max(0, min over orders), optimal_order its argmin (first on ties).

PLD (``pld.PLDAccountant(neighboring_relation, value_discretization_interval=1e-4)``,
pld/pld_privacy_accountant.py:30-252): Gaussian: ``PLD.from_gaussian_mechanism(standard_deviation=Z /
sqrt(T))`` (lines 84-94: T Gaussians = one with std Z/sqrt(T), exact); Poisson-sampled:
``from_gaussian_mechanism(Z, sampling_prob=Q).self_compose(T)`` (lines 166-182); both with the default
pessimistic estimate (discretized upwards), so ``pld.epsilon`` is a tight upper bound; get_epsilon
(lines 244-247) -> get_epsilon_for_delta.

gaussian_exact (Q == 1 only): ``get_epsilon_gaussian(Z / sqrt(T), D)`` (gaussian_mechanism.py:25-):
the analytic Gaussian mechanism of Balle & Wang 2018 for the composed mechanism, the exact epsilon.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import math

import dp_accounting
from dp_accounting import pld, rdp
from dp_accounting.privacy_accountant import NeighboringRelation


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--noise-multiplier", type=float, required=True)
    parser.add_argument("--sampling-probability", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--delta", type=float, required=True)
    parser.add_argument("--orders", default=None, help="comma-separated RDP orders (default: the library's)")
    parser.add_argument("--pld-discretization", type=float, default=1e-4)
    parser.add_argument(
        "--neighboring",
        default="add_or_remove_one",
        choices=[r.name.lower() for r in NeighboringRelation],
    )
    args = parser.parse_args()
    relation = NeighboringRelation[args.neighboring.upper()]
    z, q, t = args.noise_multiplier, args.sampling_probability, args.rounds

    gaussian = dp_accounting.GaussianDpEvent(z)
    single = gaussian if q == 1.0 else dp_accounting.PoissonSampledDpEvent(q, gaussian)
    event = dp_accounting.SelfComposedDpEvent(single, t)

    orders = [float(o) for o in args.orders.split(",")] if args.orders else None
    rdp_accountant = rdp.RdpAccountant(orders, relation)
    rdp_accountant.compose(event)
    rdp_epsilon, optimal_order = rdp_accountant.get_epsilon_and_optimal_order(args.delta)

    pld_accountant = pld.PLDAccountant(relation, value_discretization_interval=args.pld_discretization)
    pld_accountant.compose(event)

    exact = None
    if q == 1.0 and z > 0:
        exact = float(dp_accounting.get_epsilon_gaussian(z / math.sqrt(t), args.delta))

    def number(x: float) -> float | str:
        return float(x) if math.isfinite(x) else str(float(x))  # JSON has no inf

    print(
        json.dumps(
            {
                "dp_accounting": md.version("dp-accounting"),
                "event": repr(event),
                "rdp": {
                    "epsilon": number(rdp_epsilon),
                    "optimal_order": float(optimal_order),
                    "orders": [float(o) for o in rdp_accountant.orders],
                    "rdp": [number(v) for v in rdp_accountant.rdp],
                    "delta_used": args.delta,
                },
                "pld": {
                    "epsilon": number(pld_accountant.get_epsilon(args.delta)),
                    "value_discretization_interval": args.pld_discretization,
                },
                "gaussian_exact": exact,
            }
        )
    )


if __name__ == "__main__":
    main()
