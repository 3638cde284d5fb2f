"""The oracle: the billing rule and settlement written a second time, for clarity, not speed.

This package is the executable statement of the rule as the README documents it (sections
"How the two layers agree", "Time", "Money" and "The cancel horizon"). It shares no code with
``shared_logic`` beyond the contract's types, taken as plain inputs: the event dataclasses
(``Impression``, ``Click``, ``PromoView``, ``Order``, ``OrderCancel``), the catalog's records
(``Campaign``, ``Catalog``, ``Lever``, ``Pricing``, ``Budget``, ``Windows``) and the values of an
``AttributionPolicy``. It calls none of their methods that carry a rule (``active_at``,
``windows_for``, ``lookback_days``, ``by_merchant``...): it reads their fields and restates the
rule. Every clause is a small function whose docstring quotes the documentation it states.

It is brute force on purpose: every order looks at every event and every campaign; spend is
the sum of the ledger written so far, recomputed for every charge. So it is slow (quadratic)
and obviously right, which is what an oracle is for.

Two entry points:

- ``decide(order, events, catalog, policy)``: the campaign that earned one order, or None;
- ``settle(events, catalog, policy)``: the decision of every order and the ledger, in the
  one total order both layers settle in.

Events are given in the order they landed (arrival order), and are assumed to pass admission
and identity (the rules of ``shared_logic.admission`` and ``shared_logic.identity``): touches
on known campaigns, unique event ids and order ids. The rule itself still states what happens
to a touch on an unknown or inactive campaign (it earns nothing), so ``decide`` can be fed
those too.
"""

from tests.oracle.rule import OracleDecision, decide
from tests.oracle.settle import LedgerLine, Settlement, settle

__all__ = ["LedgerLine", "OracleDecision", "Settlement", "decide", "settle"]
