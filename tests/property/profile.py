"""How many examples the property tests run: ``ATTRIBUTION_TEST_PROFILE`` picks a profile.

- ``default`` (``make test``): enough examples to matter, within the suite's time budget;
- ``slow`` (nightly, or before a release): about ten times as many.

One command runs the slow profile::

    ATTRIBUTION_TEST_PROFILE=slow .venv/bin/pytest tests/property

The hypothesis profiles of the same names are registered in ``tests/property/conftest.py``;
each test asks ``examples(default, slow)`` for its own count, since a test's ``@settings``
would override a profile's ``max_examples``.
"""

from __future__ import annotations

import os
from typing import Final

PROFILES: Final = ("default", "slow")
# Read once, then taken out of the environment: the settings tree refuses every unknown
# ``ATTRIBUTION_*`` variable, so a ``Settings()`` built by a test (or a process it starts)
# would fail on this one.
PROFILE: Final = os.environ.pop("ATTRIBUTION_TEST_PROFILE", "default")
if PROFILE not in PROFILES:
    raise ValueError(f"ATTRIBUTION_TEST_PROFILE = {PROFILE!r}: must be one of {', '.join(PROFILES)}")


def examples(default: int, slow: int) -> int:
    """The example count of a test under the selected profile."""
    return slow if PROFILE == "slow" else default
