"""The lists general invalid traffic is judged by, loaded at the edge and handed to the pure rule
(``shared_logic.ivt.GivtLists``): known crawler user agents from the ``crawler-user-agents``
package (a list its maintainers keep and test, not one typed here), and data-centre IP ranges from
a file the operator replaces (``ATTRIBUTION_RULES_IVT_DATACENTER_RANGES``: one CIDR a line, ``#``
starts a comment; e.g. exported from the cloud providers' published ranges)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from shared_logic.errors import InvalidSetting
from shared_logic.ivt import GivtLists, Mode
from shared_logic.settings import RulesSettings


@cache
def crawler_patterns() -> tuple[str, ...]:
    """The crawler user-agent patterns of the installed ``crawler-user-agents``."""
    import crawleruseragents

    return tuple(str(entry["pattern"]) for entry in crawleruseragents.CRAWLER_USER_AGENTS_DATA)


def read_ranges(path: str | Path) -> tuple[str, ...]:
    """The CIDR ranges of a list file (blank lines and ``#`` comments skipped); a line that is not
    a range fails naming the file, the line and the value."""
    import ipaddress

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidSetting(
            "rules.ivt_datacenter_ranges", str(path), f"cannot be read ({exc.strerror})"
        ) from None
    out: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        value = line.split("#", 1)[0].strip()
        if not value:
            continue
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise InvalidSetting(
                "rules.ivt_datacenter_ranges", f"{path}:{number}: {value}", "is not an IP network (CIDR)"
            ) from None
        out.append(value)
    return tuple(out)


def load_givt_lists(rules: RulesSettings) -> GivtLists:
    """The lists the settings ask for: crawler patterns unless every bot rule is off (defaults and
    overrides), and the ranges file if one is set."""
    policy = rules.ivt_policy()
    bots_on = any(r.bot_user_agent is not Mode.OFF for r in (policy.defaults, *policy.overrides.values()))
    ranges = read_ranges(rules.ivt_datacenter_ranges) if rules.ivt_datacenter_ranges else ()
    return GivtLists(crawler_patterns() if bots_on else (), ranges)
