"""Reading a service's `GET /metrics` the way Prometheus does (prometheus_client's parser)."""

from collections.abc import Mapping

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample of the service's /metrics, by (sample name, labels). The text must parse."""
    answer = httpx.get(f"{url}/metrics", timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample `name` with exactly `labels` (0 if there is none)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, prefixes: tuple[str, ...]) -> Mapping[str, float]:
    """What changed between two scrapes among the samples whose name starts with one of
    `prefixes`: `name{label=value,...}` -> the difference (only non-zero ones)."""
    changed: dict[str, float] = {}
    for key in before.keys() | after.keys():
        name, labels = key
        if not name.startswith(prefixes) or name.endswith(("_created", "_sum", "_bucket")):
            continue
        difference = after.get(key, 0.0) - before.get(key, 0.0)
        if difference:
            shown = ",".join(f"{k}={v}" for k, v in sorted(labels))
            changed[f"{name}{{{shown}}}"] = difference
    return changed
