"""The read side the ad server, the API and the console share: one answer per ad request.

Small on purpose: it needs ``redis`` (the ``adserver`` extra) and the project's pure rules, never
Faust, Spark or FastAPI, so an ad server installs ``attribution-engine[adserver]`` and reads the
speed layer's Redis directly with the same key layout (``keys`` settings section) as the worker.
"""

from serving.answer import AdAnswer, AnswerReader, Reason
from serving.cached import CachedAnswerReader, CacheStats, StaleBudgetState

__all__ = ["AdAnswer", "AnswerReader", "CacheStats", "CachedAnswerReader", "Reason", "StaleBudgetState"]
