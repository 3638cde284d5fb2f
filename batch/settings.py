"""Settings of the batch layer (``ATTRIBUTION_BATCH_*``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from attribution_models import MODEL_NAMES
from shared_logic.policy import DEFAULT_ALLOWED_LATENESS_MS

DEFAULT_MODELS = ("last_touch", "first_touch", "linear", "position_based", "time_decay", "markov", "shapley")


class BatchSettings(BaseSettings):
    """What the nightly job reads, which models it runs, and how far it looks."""

    model_config = SettingsConfigDict(env_prefix="ATTRIBUTION_BATCH_", frozen=True, extra="forbid")

    lake_url: str = "file://./var/lake"
    catalog_path: str = ""
    models: tuple[str, ...] = DEFAULT_MODELS
    channel_key: Literal["campaign", "lever", "placement"] = Field(
        "campaign", description="what a touch's channel is for the multi-touch models"
    )
    markov_order: int = Field(1, ge=1, le=4)
    time_decay_half_life_ms: int = Field(7 * 86_400_000, gt=0)
    allowed_lateness_ms: int = Field(DEFAULT_ALLOWED_LATENESS_MS, ge=0)
    cancel_horizon_days: int = Field(7, ge=0, description="cancels up to this many days after D count for D")
    history_start: str | None = Field(
        None,
        description="first day settled for budget caps (YYYY-MM-DD); default: the first day of raw orders",
    )

    def model_post_init(self, _: object) -> None:
        unknown = [m for m in self.models if m not in MODEL_NAMES]
        if unknown:
            raise ValueError(f"models = {unknown!r}: must be among {', '.join(MODEL_NAMES)}")
