"""Server-side differential privacy: clip each update, combine, add Gaussian noise to the aggregate.

As Flower's DifferentialPrivacyServerSideFixedClipping / ...AdaptiveClipping: every collaborator's update (relative
to the round's global model, over all the task's tensors) is clipped to the clipping norm C, the clipped
contributions are combined by the wrapped aggregator (by default a weighted average, as Flower's FedAvg), and
Gaussian noise of standard deviation ``noise_multiplier * C / n`` is added to every value of the aggregate, ``n``
being the number of contributions (Flower: the number of clients sampled). That noise is calibrated to an
aggregate that one contribution moves by at most C / n, an unweighted mean; a weighted average moves by up to
``C * w_i / sum(w)``, so by default fedagg calibrates the noise of a weighted average to the largest share,
``noise_multiplier * C * max(w) / sum(w)`` (the same as Flower's with equal data sizes, more noise otherwise), and
the guarantee holds whatever the data sizes. ``flower_compatible: true`` keeps Flower's ``C / n``.

With adaptive clipping (Andrew et al., 2021) C follows a target quantile of the update norms, from a noised count
of clipped updates; the aggregate's noise multiplier is raised to ``(z^-2 - (2 sigma_b)^-2)^-1/2`` so that the two
noised queries together cost what one Gaussian mechanism of multiplier z costs.

Two places where Flower 1.x differs from the paper are matched only with ``flower_compatible: true``: Flower moves
C in the wrong direction (it shrinks C when more updates than the target are clipped), and it draws the aggregate's
noise with the clipping norm of the *next* round. By default fedagg grows C when too many updates are clipped and
uses the norm it clipped with.

The privacy spent is reported after every round as epsilon for ``delta`` (:mod:`.accountant`), for
``noise_multiplier`` z (with adaptive clipping too: the raised multiplier of the aggregate pays for the count);
the noise generator is seeded from the operating system unless ``seed`` is set (for tests only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from fedagg.federation.aggregators.accountant import gaussian_epsilon
from fedagg.federation.aggregators.base import (
    Aggregator,
    AggregatorState,
    Emit,
    RoundInputs,
    TensorInputs,
)
from fedagg.federation.aggregators.clipping import clip_scales, clipped, update_norms
from fedagg.federation.aggregators.elementwise import WeightedAverage
from fedagg.protocol.codec import FLOAT32, Float32Array


def adaptive_noise(noise_multiplier: float, count: int, count_stddev: float | None) -> tuple[float, float]:
    """(clipped-count noise, effective noise multiplier) as Flower's ``compute_adaptive_noise_params``."""
    if noise_multiplier <= 0:
        return (count_stddev or 0.0), 0.0
    stddev = count / 20 if count_stddev is None else count_stddev
    if noise_multiplier >= 2 * stddev:
        raise ValueError(
            f"noise_multiplier {noise_multiplier} needs clipped_count_stddev above {noise_multiplier / 2} "
            f"(it is {stddev})"
        )
    return stddev, (noise_multiplier**-2 - (2 * stddev) ** -2) ** -0.5


class GaussianMechanism(Aggregator):
    """Clip, combine with ``inner``, add Gaussian noise (module docstring).

    Args:
        inner: the aggregator of the clipped contributions (default: weighted average).
        noise_multiplier: z; the noise's standard deviation is ``z * C / n``.
        clipping_norm: C for fixed clipping; the initial C for adaptive clipping.
        adaptive: follow ``target_clipped_quantile`` of the norms (Andrew et al.).
        target_clipped_quantile, clip_norm_lr, clipped_count_stddev: adaptive clipping's settings (Flower's names).
        delta: the delta the reported epsilon is for.
        flower_compatible: reproduce Flower's adaptive update exactly (see the module docstring).
        seed: a fixed noise seed, for tests only.
    """

    def __init__(
        self,
        inner: Aggregator | None = None,
        *,
        noise_multiplier: float,
        clipping_norm: float,
        adaptive: bool = False,
        target_clipped_quantile: float = 0.5,
        clip_norm_lr: float = 0.2,
        clipped_count_stddev: float | None = None,
        delta: float = 1e-5,
        flower_compatible: bool = False,
        seed: int | None = None,
    ) -> None:
        if noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be 0 or more, got {noise_multiplier}")
        if clipping_norm <= 0:
            raise ValueError(f"clipping_norm must be above 0, got {clipping_norm}")
        if not 0 <= target_clipped_quantile <= 1:
            raise ValueError(f"target_clipped_quantile must be in [0, 1], got {target_clipped_quantile}")
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.inner = inner or WeightedAverage()
        self.slots = self.inner.slots
        self.noise_multiplier = noise_multiplier
        self.clipping_norm = clipping_norm
        self.adaptive = adaptive
        self.target_clipped_quantile = target_clipped_quantile
        self.clip_norm_lr = clip_norm_lr
        self.clipped_count_stddev = clipped_count_stddev
        self.delta = delta
        self.flower_compatible = flower_compatible
        self._rng = np.random.default_rng(seed)
        self._rounds = 0
        self._std = 0.0
        self._clipped: dict[str, TensorInputs] = {}

    def prepare(self, inputs: RoundInputs) -> None:
        count = len(inputs.collaborators)
        used_norm = self.clipping_norm
        scales = clip_scales(update_norms(inputs), used_norm)
        self._clipped = clipped(inputs, scales)
        multiplier = self.noise_multiplier
        if self.adaptive and count:
            count_stddev, multiplier = adaptive_noise(self.noise_multiplier, count, self.clipped_count_stddev)
            clipped_share = float(self._rng.normal(float(np.sum(scales < 1.0)), count_stddev)) / count
            direction = -1.0 if self.flower_compatible else 1.0
            self.clipping_norm *= math.exp(
                direction * self.clip_norm_lr * (clipped_share - self.target_clipped_quantile)
            )
        noise_norm = self.clipping_norm if self.flower_compatible else used_norm
        self._std = multiplier * noise_norm * self._largest_share(inputs)
        self._rounds += 1
        self.inner.prepare(replace(inputs, tensors=tuple(self._clipped[t.name] for t in inputs.tensors)))

    def _largest_share(self, inputs: RoundInputs) -> float:
        """How much of the aggregate one contribution can move (in units of its clipped update)."""
        count = len(inputs.collaborators)
        if self.flower_compatible or not isinstance(self.inner, WeightedAverage) or not count:
            return 1.0 / max(1, count)
        weights: dict[int, float] = {}
        for tensor in inputs.tensors:
            weights.update(zip(tensor.contributors, tensor.weights, strict=True))
        total = sum(weights.values())
        return max(weights.values()) / total if total > 0 else 1.0 / count

    def combine(self, tensor: TensorInputs, emit: Emit) -> bool:
        def noisy(block: Float32Array) -> None:
            noise = self._rng.normal(0.0, self._std, block.shape) if self._std > 0 else 0.0
            emit((block + noise).astype(FLOAT32))

        return self.inner.combine(self._clipped.get(tensor.name, tensor), noisy)

    def bind_state(self, state: AggregatorState) -> None:
        self.inner.bind_state(state)

    def save(self) -> Mapping[str, Any]:
        return {
            "inner": dict(self.inner.save()),
            "clipping_norm": self.clipping_norm,
            "rounds": self._rounds,
            "noise_stddev": self._std,
        }

    def load(self, saved: Mapping[str, Any]) -> None:
        self.inner.load(saved.get("inner", {}))
        self.clipping_norm = float(saved.get("clipping_norm", self.clipping_norm))
        self._rounds = int(saved.get("rounds", 0))
        self._std = float(saved.get("noise_stddev", 0.0))

    def report(self) -> Mapping[str, float]:
        epsilon = gaussian_epsilon(self.noise_multiplier, self._rounds, self.delta)
        return {
            **self.inner.report(),
            "epsilon": epsilon,
            "delta": self.delta,
            "clipping_norm": self.clipping_norm,
            "noise_stddev": self._std,
        }
