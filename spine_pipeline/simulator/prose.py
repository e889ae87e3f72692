"""Plausible markdown and source attributions, drawn from a seeded RNG.

Content is deliberately awkward for archivers: non-ASCII text and emoji, tables, and sometimes
significant leading/trailing whitespace or CRLF line endings (the SDK strips whitespace, an
archive must not).
"""

from __future__ import annotations

import random
import re
import string
from typing import Any

DOMAINS: tuple[str, ...] = (
    "www.reuters.com",
    "www.ft.com",
    "www.bloomberg.com",
    "www.nature.com",
    "arxiv.org",
    "en.wikipedia.org",
    "www.sec.gov",
    "www.iea.org",
    "data.worldbank.org",
    "www.mckinsey.com",
    "hbr.org",
    "www.statista.com",
    "www.economist.com",
    "techcrunch.com",
    "www.theverge.com",
    "github.com",
    "docs.python.org",
    "www.oecd.org",
    "ec.europa.eu",
    "www.nikkei.com",
    "www.lemonde.fr",
    "www.who.int",
    "pubmed.ncbi.nlm.nih.gov",
    "www.gartner.com",
)

NON_ASCII: tuple[str, ...] = (
    "café",
    "naïve",
    "日本語",
    "Zürich",
    "São Paulo",
    "façade",
    "Ærø",
    "Kraków",
    "€1.2 bn",
    "±3 %",
    "naïveté",
    "résumé",
    "—",
    "📈",
    "🚀",
    "✅",
    "中文资料",
    "Ελληνικά",
    "العربية",
    "smörgåsbord",
)

METRICS = (
    "revenue",
    "gross margin",
    "market share",
    "unit cost",
    "customer churn",
    "adoption rate",
    "capex",
    "net retention",
    "average selling price",
    "installed base",
    "lead time",
    "conversion rate",
)
REGIONS = ("North America", "the EU", "APAC", "Latin America", "Japan", "the Nordics", "India")
COMPANIES = (
    "Acme Corp",
    "Globex",
    "Initech",
    "Umbrella",
    "Stark Industries",
    "Wayne Enterprises",
    "Tyrell",
    "Soylent",
    "Hooli",
    "Vandelay Industries",
)
VERBS = (
    "rose",
    "fell",
    "stabilised",
    "accelerated",
    "slowed",
    "doubled",
    "outperformed",
    "lagged",
    "recovered",
    "plateaued",
)
HEDGES = (
    "according to recent filings",
    "per the latest survey",
    "based on three independent sources",
    "though estimates vary",
    "in the base case",
    "excluding one-off items",
    "on a like-for-like basis",
    "if current trends hold",
)
ASPECTS = (
    "market size",
    "competitive landscape",
    "pricing",
    "regulation",
    "supply chain",
    "customer segments",
    "risks",
    "growth drivers",
    "unit economics",
    "technology trends",
    "go-to-market",
    "hiring",
    "sustainability",
)

_SENTENCES = (
    "{Topic} {verb} in {region} over {year}, {hedge}.",
    "The {metric} for {company} {verb} by {pct}% year on year.",
    "Analysts expect {metric} in {region} to reach {money} by {year2}.",
    "{company} remains the reference player for {aspect}, {hedge}.",
    "Our view: {aspect} is the main swing factor for {topic}.",
    "Across {n} sources, the consensus on {aspect} is cautiously positive.",
    "Key uncertainty: how {metric} evolves if {company} changes its pricing.",
    "In {region}, {aspect} differs materially from the global picture ({pct}% gap).",
    "A naïve extrapolation would overstate {metric} by roughly {pct}%.",
    "The data for {year} is incomplete; treat {metric} figures as provisional.",
)

_SLOTS: dict[str, tuple[str, ...]] = {
    template: tuple(
        dict.fromkeys(name for _, name, _, _ in string.Formatter().parse(template) if name)
    )
    for template in _SENTENCES
}

_MARKER_RE = re.compile(r"\[scenario:[^\]]*\]")


def clean_prompt(prompt: str) -> str:
    """The prompt without scenario markers, whitespace collapsed."""
    return " ".join(_MARKER_RE.sub(" ", prompt).split())


_LEADING = {
    "write",
    "create",
    "build",
    "research",
    "analyse",
    "analyze",
    "summarise",
    "summarize",
    "compare",
    "draft",
    "make",
    "produce",
    "prepare",
    "generate",
    "a",
    "an",
    "the",
    "on",
    "about",
    "report",
    "memo",
    "deck",
    "of",
    "for",
    "please",
    "me",
    "us",
    "quick",
    "short",
    "detailed",
}


def topic_of(prompt: str) -> str:
    """A short noun phrase for names ("EV battery supply chain")."""
    text = clean_prompt(prompt)
    first = re.split(r"[.?!\n]", text, maxsplit=1)[0]
    words = [w.strip(",;:()\"'") for w in first.split()]
    while words and words[0].lower() in _LEADING:
        words.pop(0)
    words = [w for w in words if w][:6]
    return " ".join(words) if words else "Untitled research"


def title_case(text: str) -> str:
    """Capitalise the first letter of each word, leaving the rest alone (keeps 'EV', 'iPhone')."""
    return " ".join(w[:1].upper() + w[1:] for w in text.split())


def file_stem(topic: str) -> str:
    """A filename-friendly stem: letters/digits (any script) joined by underscores."""
    words = re.findall(r"\w+", topic)
    return "_".join(w[:1].upper() + w[1:] for w in words)[:60] or "Output"


class Writer:
    """Generates markdown about one topic with a seeded RNG."""

    def __init__(self, rng: random.Random, topic: str) -> None:
        self.rng = rng
        self.topic = topic

    def _pick(self, options: tuple[str, ...]) -> str:
        return options[int(self.rng.random() * len(options))]

    def _fill(self, template: str) -> str:
        """Format a sentence template, drawing only the slots it uses (speed matters)."""
        rand = self.rng.random
        pick = self._pick
        values: dict[str, object] = {}
        for key in _SLOTS[template]:
            if key == "topic":
                values[key] = self.topic
            elif key == "Topic":
                values[key] = title_case(self.topic)
            elif key == "verb":
                values[key] = pick(VERBS)
            elif key == "region":
                values[key] = pick(REGIONS)
            elif key in ("year", "year2"):
                if "year" not in values:
                    values["year"] = 2021 + int(rand() * 6)
                values["year2"] = values["year"] + 2 + int(rand() * 6)  # type: ignore[operator]
            elif key == "hedge":
                values[key] = pick(HEDGES)
            elif key == "metric":
                values[key] = pick(METRICS)
            elif key == "company":
                values[key] = pick(COMPANIES)
            elif key == "pct":
                values[key] = 2 + int(rand() * 58)
            elif key == "money":
                values[key] = f"${1 + int(rand() * 899)}{'m' if rand() < 0.5 else 'bn'}"
            elif key == "aspect":
                values[key] = pick(ASPECTS)
            elif key == "n":
                values[key] = 3 + int(rand() * 37)
        text = template.format_map(values)
        if rand() < 0.25:
            text = f"{text[:-1]} ({pick(NON_ASCII)})."
        return text

    def sentence(self) -> str:
        """One sentence."""
        return self._fill(self.rng.choice(_SENTENCES))

    def paragraph(self, low: int = 2, high: int = 5) -> str:
        """A paragraph of a few sentences."""
        return " ".join(self.sentence() for _ in range(self.rng.randint(low, high)))

    def bullets(self, low: int = 3, high: int = 6, numbered: bool = False) -> str:
        """A bullet (or numbered) list."""
        count = self.rng.randint(low, high)
        items = []
        for i in range(count):
            mark = f"{i + 1}." if numbered else self.rng.choice(("-", "-", "*"))
            items.append(f"{mark} {self.sentence()}")
        return "\n".join(items)

    def table(self) -> str:
        """A small markdown table of metrics."""
        r = self.rng
        cols = r.randint(2, 4)
        years = [str(2023 + i) for i in range(cols)]
        lines = ["| Metric | " + " | ".join(years) + " |", "|---|" + "---:|" * cols]
        for metric in r.sample(METRICS, r.randint(3, 6)):
            values = " | ".join(f"{r.uniform(1, 500):.1f}" for _ in range(cols))
            lines.append(f"| {metric.capitalize()} | {values} |")
        return "\n".join(lines)

    def json_table(self) -> str:
        """A table as JSON text (table-block content format is undocumented)."""
        r = self.rng
        rows = [
            {
                "metric": m,
                "value": round(r.uniform(1, 500), 2),
                "unit": r.choice(["%", "USD m", "k units"]),
            }
            for m in r.sample(METRICS, r.randint(3, 6))
        ]
        from .jsonio import dumps

        return dumps({"columns": ["metric", "value", "unit"], "rows": rows})

    def document(self, heading: str, target_chars: int) -> str:
        """A markdown document of roughly ``target_chars`` characters."""
        r = self.rng
        parts = [f"# {heading}", self.paragraph()]
        sections = list(ASPECTS)
        r.shuffle(sections)
        for aspect in sections:
            if sum(len(p) for p in parts) >= target_chars:
                break
            parts.append(f"## {aspect.capitalize()}")
            kind = r.random()
            if kind < 0.45:
                parts.append(self.paragraph())
            elif kind < 0.75:
                parts.append(self.bullets(numbered=r.random() < 0.3))
            elif kind < 0.9:
                parts.append(self.table())
            else:
                parts.append(f"> {self.sentence()}")
        return "\n\n".join(parts)

    def quirks(self, text: str) -> str:
        """Sometimes add leading/trailing whitespace or switch to CRLF line endings."""
        r = self.rng
        if r.random() < 0.12:
            text = text.replace("\n", "\r\n")
        if r.random() < 0.15:
            text = r.choice(("\n", "  ", "\n\n  ", "\t", " \r\n")) + text
        if r.random() < 0.2:
            text = text + r.choice(("\n", "  \n", "\n\n", " ", "\r\n"))
        return text


def web_url(rng: random.Random, topic: str) -> str:
    """A realistic article URL about ``topic``."""
    domain = rng.choice(DOMAINS)
    slug = "-".join(re.findall(r"[a-z0-9]+", topic.lower())[:5]) or "article"
    section = rng.choice(["news", "articles", "reports", "wiki", "abs"])
    return f"https://{domain}/{section}/{slug}-{rng.randrange(10**5, 10**6)}"


def web_source(rng: random.Random, topic: str) -> dict[str, Any]:
    """A typical ``{url, title, snippet}`` source."""
    url = web_url(rng, topic)
    kind = rng.choice(["outlook", "update", "analysis", "deep dive"])
    title = f"{title_case(topic)}: {rng.choice(ASPECTS)} {kind}"
    return {"url": url, "title": title, "snippet": Writer(rng, topic).sentence()}


def odd_source(rng: random.Random, topic: str) -> Any:
    """A source element in one of the shapes that break naive flatteners."""
    base = web_source(rng, topic)
    choice = rng.randrange(10)
    if choice == 0:
        return base["url"]
    if choice == 1:
        return None
    if choice == 2:
        return {
            **base,
            "published_at": "2026-03-14T09:30:00Z",
            "relevance": round(rng.random(), 3),
            "lang": rng.choice(["en", "fr", "ja"]),
        }
    if choice == 3:
        return {
            "source": {
                "url": base["url"],
                "meta": {"authors": ["A. Müller", "李 雷"], "pages": [1, 2]},
            }
        }
    if choice == 4:
        return [base["url"], base["title"]]
    if choice == 5:
        return {"title": base["title"]}
    if choice == 6:
        return ""
    if choice == 7:
        return [[1, [2, [3, None]]], {"nested": [{"url": base["url"]}]}]
    if choice == 8:
        return {"url": None, "title": None, "snippet": None}
    return rng.choice([42, 3.5, True, {}])


def sources_for(rng: random.Random, topic: str, count: int, odd_rate: float) -> list[Any]:
    """``count`` sources, each odd-shaped with probability ``odd_rate``."""
    return [
        odd_source(rng, topic) if rng.random() < odd_rate else web_source(rng, topic)
        for _ in range(count)
    ]
