"""ChannelAttribution, the peer our models are measured against (tests/peer, benchmarks/models).

It prints a banner on every call; these wrappers keep output readable and pass the
aggregate column names this project's frames use.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any


def channelattribution(name: str, frame: Any, **kwargs: Any) -> Any:
    """``ChannelAttribution.<name>(frame, "path", "total_conversions", var_value=…, …)``, silently."""
    import ChannelAttribution

    fn = getattr(ChannelAttribution, name)
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(
            frame,
            "path",
            "total_conversions",
            var_value="total_conversion_value",
            flg_pro=False,
            **kwargs,
        )


def ca_markov(frame: Any, order: int, **kwargs: Any) -> Any:
    """ChannelAttribution's (simulated) Markov model of order ``order``."""
    return channelattribution(
        "markov_model", frame, var_null="total_null", order=order, verbose=False, **kwargs
    )
