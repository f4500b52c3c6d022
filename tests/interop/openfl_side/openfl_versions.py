"""What the oracle imports differently from OpenFL 1.7.1 and from 1.8/1.9: the straggler policies and the gRPC
channel options (``LEGACY``: running with 1.7.1). Import the module whole: each version defines only its names.
"""

from __future__ import annotations

try:  # OpenFL 1.7.1
    from openfl.component.straggler_handling_functions import (
        CutoffTimeBasedStragglerHandling,
        PercentageBasedStragglerHandling,
    )
    from openfl.transport.grpc.grpc_channel_options import channel_options

    LEGACY = True
except ImportError:  # OpenFL 1.8 and 1.9
    from openfl.component.aggregator.straggler_handling import (
        CutoffTimePolicy,
        PercentagePolicy,
        WaitForAllPolicy,
    )
    from openfl.transport.grpc.common import DEFAULT_CHANNEL_OPTIONS

    channel_options = DEFAULT_CHANNEL_OPTIONS
    LEGACY = False

__all__ = [
    "LEGACY",
    "CutoffTimeBasedStragglerHandling",
    "CutoffTimePolicy",
    "PercentageBasedStragglerHandling",
    "PercentagePolicy",
    "WaitForAllPolicy",
    "channel_options",
]
