"""The ad server's lane reads its query as Starlette's ``QueryParams`` does, whatever the bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.datastructures import QueryParams

from reporting.routes.budget import answer_query

pytestmark = pytest.mark.unit

#: Pieces a query is made of, the awkward ones included: separators, escapes, '+', a byte past ASCII.
_PIECES = st.sampled_from(
    [
        "user_id",
        "campaign_id",
        "at",
        "CAMPAIGN_ID",
        "=",
        "&",
        ";",
        "x",
        "1",
        "%20",
        "%",
        "+",
        "%2B",
        "\xe9",
        " ",
    ]
)


def _starlette(raw: bytes) -> tuple[str | None, list[str], str | None]:
    query = QueryParams(raw)
    return query.get("user_id"), query.getlist("campaign_id"), query.get("at")


@given(st.lists(_PIECES, max_size=16).map(lambda p: "".join(p).encode("latin-1")))
def test_the_answers_query_is_read_as_starlette_reads_it(raw: bytes) -> None:
    assert answer_query(raw) == _starlette(raw)


def test_a_plain_query_keeps_the_last_user_and_every_id_in_order() -> None:
    raw = b"user_id=a&campaign_id=c2&&campaign_id=c1&user_id=b&campaign_id&at=5"
    assert answer_query(raw) == ("b", ["c2", "c1", ""], "5") == _starlette(raw)
