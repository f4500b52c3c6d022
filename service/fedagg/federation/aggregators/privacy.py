"""Server-side differential privacy: clip each update, combine, add Gaussian noise to the aggregate.

As Flower's DifferentialPrivacyServerSideFixedClipping / ...AdaptiveClipping: every collaborator's update (relative
to the round's global model, over all the task's tensors, base 0 for a tensor the model lacks) is clipped to the
clipping norm C, the clipped contributions are combined by the wrapped aggregator (by default a weighted average,
as Flower's FedAvg), and Gaussian noise of standard deviation ``noise_multiplier * share * C`` is added to every
value of the aggregate. ``share`` is what the wrapped method declares (:class:`BoundedAggregator`): how far one
contribution within the clip ball can move the aggregate, in units of C. A weighted average declares its largest
weight share ``max(w) / sum(w)`` (Flower's ``1 / n`` with equal data sizes, more otherwise), a median 1 (or 1/2),
a trimmed mean ``1 / (n - 2 int(beta n))``; methods that declare none (Krum, Bulyan, the geometric median, the
adaptive optimizers) are refused at the configuration check. ``flower_compatible: true`` keeps Flower's ``C / n``
whatever the weights: the guarantee then holds only with equal data sizes.

With adaptive clipping (Andrew et al., 2021) C follows a target quantile of the update norms, from a noised count
of clipped updates; the aggregate's noise multiplier is raised to ``(z^-2 - (2 sigma_b)^-2)^-1/2`` so that the two
noised queries together cost what one Gaussian mechanism of multiplier z costs.

Two places where Flower 1.x differs from the paper are matched only with ``flower_compatible: true``: Flower moves
C in the wrong direction (it shrinks C when more updates than the target are clipped), and it draws the aggregate's
noise with the clipping norm of the *next* round. By default fedagg grows C when too many updates are clipped and
uses the norm it clipped with.

In a scale-out tier the ingest replicas clip each contribution as they fold it, to the norm the root publishes
with the round (:meth:`GaussianMechanism.clip_norm`), and deliver the sums of the clipped contributions with how
many were clipped; the root's mechanism then takes them as clipped (:class:`~.base.ClippedBeforehand`), draws the
count's and the aggregate's noise once, and moves C, exactly as here.

The privacy spent is reported after every round as epsilon for ``delta`` (:mod:`.accountant`), for
``noise_multiplier`` z (with adaptive clipping too: the raised multiplier of the aggregate pays for the count).
Every draw comes from a generator seeded by (experiment seed, task, round, draw) (:mod:`.noise`): a round redone
after a failed or crashed round end releases the same model. ``seed`` sets the experiment seed (tests only); the
round end gives the mechanism the state directory's.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedagg.federation.aggregators.accountant import gaussian_epsilon
from fedagg.federation.aggregators.base import (
    Aggregator,
    AggregatorState,
    BoundedAggregator,
    Emit,
    RoundInputs,
    TensorInputs,
)
from fedagg.federation.aggregators.clipping import clip_scales, clipped, update_norms
from fedagg.federation.aggregators.elementwise import WeightedAverage
from fedagg.federation.aggregators.noise import noise_generator
from fedagg.protocol.codec import FLOAT32, Float32Array

log = logging.getLogger(__name__)

SIGNAL_TO_NOISE_WARNING = 10.0
"""Below this expected signal-to-noise ratio the configuration check warns (at 1 or below it refuses)."""


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


def signal_to_noise(settings: Mapping[str, Any], collaborators: int) -> float:
    """The expected signal-to-noise ratio of a round of ``collaborators`` equal contributions; raise ValueError
    for settings under which the aggregate cannot carry the updates (the configuration check).

    The signal is the largest move of the aggregate, C (every update at the clip norm, all aligned); the noise is
    the standard deviation of one value, ``z_a * C / n`` at best (equal weights; ``z_a`` the aggregate's
    multiplier, raised by adaptive clipping). Their ratio ``n / z_a`` at or below 1 means the noise of a single
    value is as large as the whole update could be: the model would not train.
    """
    multiplier = float(settings.get("noise_multiplier", 0.0))
    if multiplier <= 0:
        return math.inf
    if settings.get("adaptive", False):
        _, multiplier = adaptive_noise(multiplier, collaborators, settings.get("clipped_count_stddev"))
    ratio = collaborators / multiplier
    if ratio <= 1:
        raise ValueError(
            f"with {collaborators} collaborator(s) the noise's standard deviation ({multiplier:.3g} C / "
            f"{collaborators}) is at least the largest possible mean update (C): the model would not train; "
            "lower noise_multiplier or add collaborators"
        )
    if ratio < SIGNAL_TO_NOISE_WARNING:
        log.warning(
            "differential privacy: expected signal-to-noise ratio %.3g with %d collaborator(s) (noise multiplier "
            "%.3g): the model may hardly train",
            ratio,
            collaborators,
            multiplier,
        )
    return ratio


class GaussianMechanism(Aggregator):
    """Clip, combine with ``inner``, add Gaussian noise (module docstring).

    Args:
        inner: the aggregator of the clipped contributions (default: weighted average); it declares its
            sensitivity share.
        noise_multiplier: z; the noise's standard deviation is ``z * share * C``.
        clipping_norm: C for fixed clipping; the initial C for adaptive clipping.
        adaptive: follow ``target_clipped_quantile`` of the norms (Andrew et al.).
        target_clipped_quantile, clip_norm_lr, clipped_count_stddev: adaptive clipping's settings (Flower's names).
        delta: the delta the reported epsilon is for.
        flower_compatible: reproduce Flower's adaptive update exactly (see the module docstring).
        seed: a fixed experiment seed, for tests only (:mod:`.noise`).
    """

    def __init__(
        self,
        inner: BoundedAggregator | None = None,
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
        self.experiment_seed = secrets.token_bytes(32) if seed is None else seed.to_bytes(32, "big")
        """The seed of every draw; the round end sets the state directory's (:mod:`.noise`)."""
        self._round = (0, "")
        self._rounds = 0
        self._std = 0.0
        self._clipped: dict[str, TensorInputs] = {}

    def prepare(self, inputs: RoundInputs) -> None:
        """Clip every update, size this round's noise, move an adaptive clipping norm; then ``inner`` prepares.
        Inputs clipped beforehand (:attr:`RoundInputs.clipped`: a tier's root) are taken as they are, with the
        count of clipped updates and the contributors they stand for (raises ValueError for another norm than the
        round's).

        The noise's standard deviation MUST be ``z * share * C``, ``share`` the inner method's declared share
        (``z`` raised by adaptive clipping's count query, ``C`` the norm it clipped with).
        """
        self._round = (inputs.round_number, inputs.task)
        used_norm = self.clipping_norm
        if inputs.clipped is None:
            scales = clip_scales(update_norms(inputs), used_norm)
            clipped_inputs = contributed = clipped(inputs, scales)
            clipped_count = float(np.sum(scales < 1.0))
        else:  # clipped where they were folded (a tier's ingest replicas), with this very norm
            if inputs.clipped.norm != used_norm:
                raise ValueError(
                    f"the contributions were clipped to {inputs.clipped.norm}, the round's clipping norm is "
                    f"{used_norm}"
                )
            clipped_inputs, contributed = inputs, inputs.clipped.contributed
            clipped_count = float(inputs.clipped.clipped)
        self._clipped = {tensor.name: tensor for tensor in clipped_inputs.tensors}
        count = len(contributed.collaborators)
        multiplier = self.noise_multiplier
        if self.adaptive and count:
            try:
                count_stddev, multiplier = adaptive_noise(
                    self.noise_multiplier, count, self.clipped_count_stddev
                )
            except (
                ValueError
            ) as error:  # fewer contributions than planned: no count query, C stays this round
                log.warning(
                    "round %d, task %r: the clipping norm stays %g this round: %s",
                    inputs.round_number,
                    inputs.task,
                    used_norm,
                    error,
                )
            else:
                noised_count = self._generator("clipped_count").normal(clipped_count, count_stddev)
                direction = -1.0 if self.flower_compatible else 1.0
                self.clipping_norm *= math.exp(
                    direction
                    * self.clip_norm_lr
                    * (float(noised_count) / count - self.target_clipped_quantile)
                )
        noise_norm = self.clipping_norm if self.flower_compatible else used_norm
        self._std = multiplier * noise_norm * self.sensitivity_share(contributed)
        self._rounds += 1
        self.inner.prepare(clipped_inputs)

    def sensitivity_share(self, inputs: RoundInputs) -> float:
        """How far one contribution moves the aggregate, in units of C: the inner method's declared share
        (Flower's ``1 / n`` with ``flower_compatible``)."""
        if self.flower_compatible or not inputs.collaborators:
            return 1.0 / max(1, len(inputs.collaborators))
        return self.inner.sensitivity_share(inputs)

    def _generator(self, draw: str) -> np.random.Generator:
        """The generator of one draw of the round being aggregated (:func:`.noise.noise_generator`)."""
        round_number, task = self._round
        return noise_generator(self.experiment_seed, task, round_number, draw)

    def combine(self, tensor: TensorInputs, emit: Emit) -> bool:
        """The inner method's aggregate of the clipped contributions, plus Gaussian noise.

        Its noise MUST come from (experiment seed, task, round, tensor) alone: the same round aggregated again
        gives the same bits, another round, tensor or experiment seed independent noise.
        """
        generator = self._generator(f"tensor:{tensor.name}")

        def noisy(block: Float32Array) -> None:
            noise = generator.normal(0.0, self._std, block.shape) if self._std > 0 else 0.0
            emit((block + noise).astype(FLOAT32))

        return self.inner.combine(self._clipped.get(tensor.name, tensor), noisy)

    def bind_state(self, state: AggregatorState) -> None:
        self.inner.bind_state(state)

    def clip_norm(self) -> float | None:
        """The clipping norm of the next round (adaptive clipping moves it at each round end)."""
        return self.clipping_norm

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
        """The privacy spent, the clipping norm and the last round's noise.

        ``epsilon`` MUST be the accountant's (equal to dp-accounting's) for ``noise_multiplier`` and ``delta``
        over the rounds aggregated, a round undone by :meth:`load` not counted.
        """
        epsilon = gaussian_epsilon(self.noise_multiplier, self._rounds, self.delta)
        return {
            **self.inner.report(),
            "epsilon": epsilon,
            "delta": self.delta,
            "clipping_norm": self.clipping_norm,
            "noise_stddev": self._std,
        }
