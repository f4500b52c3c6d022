"""Aggregation methods: the plug-in interface, the built-in methods and how a plan names them."""

from fedagg.federation.aggregators.base import (
    BLOCK_ELEMENTS,
    Aggregator,
    AggregatorState,
    Emit,
    RoundInputs,
    TensorInputs,
    blocks,
)

__all__ = ["BLOCK_ELEMENTS", "Aggregator", "AggregatorState", "Emit", "RoundInputs", "TensorInputs", "blocks"]
