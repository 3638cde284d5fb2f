"""Hypothesis profiles of the property tests, chosen by ``ATTRIBUTION_TEST_PROFILE``.

- ``default``: the suite's profile (``tests/conftest.py``: no per-example deadline), unchanged,
  so running the whole suite with this folder in it changes no other test's settings; each test
  of this folder sets its own example count for it (``tests.property.profile.examples``).
- ``slow``: every property test of the session runs ten times its usual examples at least
  (``max_examples=1000`` for tests that do not set a count; this folder's tests ask
  ``examples(default, slow)``). Select it with one command::

      ATTRIBUTION_TEST_PROFILE=slow .venv/bin/pytest tests/property
"""

from __future__ import annotations

from hypothesis import settings

from tests.property.profile import PROFILE

settings.register_profile("default", parent=settings.get_profile("default"))
settings.register_profile("slow", parent=settings.get_profile("suite"), max_examples=1_000)
if PROFILE != "default":
    settings.load_profile(PROFILE)
