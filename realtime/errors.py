"""Errors of the speed layer."""

from __future__ import annotations

from shared_logic.errors import NotFound, Unavailable


class UnknownCampaign(NotFound):
    """A campaign id that is not in the catalog."""

    def __init__(self, campaign_id: str) -> None:
        self.campaign_id = campaign_id
        super().__init__(f"campaign_id = {campaign_id!r}: not a campaign of the catalog")


class BrokerUnavailable(Unavailable):
    """No Kafka broker answers at the configured URL."""


class RedisUnavailable(Unavailable):
    """The speed layer's Redis does not answer."""
