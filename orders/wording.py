"""How an order's amounts and times read to a person: the console's pages and the command
line say them the same way."""

from datetime import UTC, datetime


def money(cents: object) -> str:
    return f"${cents / 100:,.2f}" if isinstance(cents, int) else "—"


def timestamp(moment: datetime | None) -> str:
    """'YYYY-MM-DD HH:MM:SS.mmm', in UTC ('' for none)."""
    return "" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    if moment is None:
        return ""
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    if seconds < 1:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def took(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    seconds = (end - start).total_seconds()
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def remaining(deadline: datetime, now: datetime | None = None) -> str:
    """Time until `deadline`: '1 h 02 min', '3 min 05 s', or 'passed'."""
    seconds = (deadline - (now or datetime.now(UTC))).total_seconds()
    if seconds <= 0:
        return "passed"
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"
