"""What each number on the pages means: a short definition, its unit and where the served docs
define it in full (the "?" next to a metric tile or a headline row, templates/_define.html).

Keys are the names the JSON uses: the analysis summary's fields (and the recovery's), and the
measures of a job's headline table (report/headline.py), objectives' and TIP's rows included.
The words follow docs/metrics.md and docs/objectives.md; tests/web/test_everywhere.py checks
that every tile and headline measure has one and that every anchor exists in the served page.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from vrollout.report.headline import MEASURES, OBJECTIVE_FIELDS, QUADRANT_FIELDS

DOCS_URL = "/docs/"  # the manual served by the app (web/manual.py), offline


@dataclass(frozen=True)
class Definition:
    name: str  # what the page calls it
    definition: str  # one or two sentences, plain text
    unit: str  # e.g. "nats", "share of tokens", "count"
    page: str  # a page of docs/, e.g. "metrics.md"
    anchor: str  # a heading's id on that page (the served page and mkdocs give the same ids)

    @property
    def url(self) -> str:
        return f"{DOCS_URL}{self.page}#{self.anchor}"

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "url": self.url}


def _summary(name: str, definition: str, unit: str, anchor: str = "summary-fields") -> Definition:
    return Definition(name, definition, unit, "metrics.md", anchor)


CONCENTRATION = "signal-concentration"
HEADLINE = "the-headline-table"
RECOVERY = "recovery"

DEFINITIONS: dict[str, Definition] = {
    # ----- the analysis page's tiles (summary fields) -----
    "tokens": _summary("tokens", "The number of response tokens, one step each.", "tokens"),
    "agreement_rate": _summary(
        "agreement",
        "The share of steps where the teacher's top-1 token is the student's token: "
        "(tokens − divergences) / tokens.",
        "share of tokens",
    ),
    "divergences": _summary(
        "divergences",
        "The number of steps where the teacher's top-1 token differs from the student's.",
        "count",
    ),
    "first_divergence": _summary(
        "first divergence",
        "The 0-based position of the first divergence; none when the teacher agrees everywhere.",
        "token position",
    ),
    "reverse_kl_total": _summary(
        "reverse KL total",
        "The sum over steps of KL(student ‖ teacher) at each prefix: the signal on-policy "
        "distillation trains on. Bits are nats / ln 2.",
        "nats",
    ),
    "reverse_kl_mean": _summary(
        "reverse KL mean", "The reverse KL total divided by the number of tokens.", "nats per token"
    ),
    "reverse_kl_share_at_divergences": _summary(
        "KL at divergences",
        "The share of the reverse KL total that sits at the divergent steps.",
        "share of reverse KL",
    ),
    "advantage_total": _summary(
        "advantage total",
        "The teacher's log-likelihood of the response minus the student's: the sum of the per-token rewards.",
        "nats",
    ),
    "top_5pct": _summary(
        "top 5% of tokens carry",
        "The share of the reverse KL carried by the 5% of tokens with the largest values (at least "
        "one token). The Gini beside it is 0 when every token carries the same.",
        "share of reverse KL",
        CONCENTRATION,
    ),
    "teacher_mass_on_student_topk_mean": _summary(
        "teacher mass on student top-k",
        "The teacher's probability on the student's top-k tokens, averaged over the steps.",
        "probability",
    ),
    "divergences_in_student_topk": _summary(
        "corrections in student top-k",
        "Divergences whose correction (the teacher's top-1) is among the student's own top-k tokens.",
        "count",
    ),
    "student_success": _summary(
        "student's answer",
        "Whether the student's own response reaches the reference answer (the recovery's quick check).",
        "correct or wrong",
        RECOVERY,
    ),
    "last_recoverable": _summary(
        "last recoverable",
        "The last prefix from which the teacher, taking over greedily, still reaches the reference answer.",
        "token position",
        RECOVERY,
    ),
    "reverse_kl_share_after_last_recoverable": _summary(
        "KL after it",
        "The share of the reverse KL total after the last recoverable prefix: signal spent where "
        "the answer could no longer be saved.",
        "share of reverse KL",
        RECOVERY,
    ),
    # ----- a job's headline table (report/headline.py MEASURES) -----
    "kl_top_1pct": _summary(
        "top 1% of tokens carry",
        "Per trajectory, the share of its reverse KL carried by its 1% largest tokens.",
        "share of reverse KL",
        CONCENTRATION,
    ),
    "kl_top_5pct": _summary(
        "top 5% of tokens carry",
        "Per trajectory, the share of its reverse KL carried by its 5% largest tokens.",
        "share of reverse KL",
        CONCENTRATION,
    ),
    "kl_tokens_for_80pct": _summary(
        "tokens for 80% of reverse KL",
        "Per trajectory, the smallest share of its tokens whose reverse KL adds up to 80% of the total.",
        "share of tokens",
        CONCENTRATION,
    ),
    "kl_gini": _summary(
        "Gini of reverse KL",
        "How unevenly the reverse KL is spread over a trajectory's tokens: 0 when equal, near 1 when "
        "one token carries it all.",
        "number, 0 to 1",
        CONCENTRATION,
    ),
    "abs_advantage_top_5pct": _summary(
        "top 5% of tokens carry |advantage|",
        "Per trajectory, the share of its summed |advantage| (the per-token reward's size) carried "
        "by its 5% largest tokens.",
        "share of |advantage|",
        CONCENTRATION,
    ),
    "abs_advantage_tokens_for_80pct": _summary(
        "tokens for 80% of |advantage|",
        "Per trajectory, the smallest share of its tokens whose |advantage| adds up to 80% of the total.",
        "share of tokens",
        CONCENTRATION,
    ),
    "abs_advantage_gini": _summary(
        "Gini of |advantage|",
        "How unevenly |advantage| is spread over a trajectory's tokens (0: equal).",
        "number, 0 to 1",
        CONCENTRATION,
    ),
    "divergences_per_100_tokens": _summary(
        "divergences per 100 tokens",
        "100 × divergences / tokens, per trajectory.",
        "per 100 tokens",
        HEADLINE,
    ),
    "divergences_in_student_topk_share": _summary(
        "share of divergences the student could take",
        "Per trajectory, the share of divergences whose correction is in the student's top-k.",
        "share of divergences",
        HEADLINE,
    ),
    "surface_share": _summary(
        "surface share",
        "Per trajectory, the share of classified divergences that are surface: the teacher's "
        "continuation re-joins the student's tokens.",
        "share of divergences",
        "surface-or-fork",
    ),
    "divergences_surface": _summary(
        "surface divergences",
        "Divergences after which the teacher's continuation re-joins the student's tokens.",
        "count per trajectory",
        "surface-or-fork",
    ),
    "divergences_fork": _summary(
        "forks",
        "Divergences after which the teacher's continuation does not re-join the student's tokens.",
        "count per trajectory",
        "surface-or-fork",
    ),
    "forks_that_matter": _summary(
        "forks that matter",
        "Forks where the teacher reaches the reference answer from before the fork but not from after it.",
        "count per trajectory",
        "surface-or-fork",
    ),
}

# A distillation objective's rows (`<objective>_<field>`, docs/objectives.md) and TIP's
# quadrants' (`<quadrant>_<field>`): one definition per field, named with the row's own prefix.
OBJECTIVE_WORDS = {
    "total": ("The objective's value summed over the steps.", "nats"),
    "bias": ("The objective's total minus the exact reverse KL total.", "nats"),
    "spearman": (
        "The rank correlation of the objective's per-step values with the exact reverse KL.",
        "-1 to 1",
    ),
    "top5pct_overlap": (
        "The share of the objective's signal on the 5% of tokens with the largest exact reverse KL.",
        "share",
    ),
    "gini": ("How unevenly the objective's signal is spread over the tokens (0: equal).", "number, 0 to 1"),
    "clipped_share": ("The share of the objective's signal that clipping at τ removes.", "share"),
}
QUADRANT_WORDS = {
    "tokens": (
        "The share of the trajectory's tokens in this quadrant of student entropy × reverse KL.",
        "share",
    ),
    "signal": ("The share of the trajectory's reverse KL in this quadrant.", "share"),
}
assert set(OBJECTIVE_WORDS) == {f for f, _, _ in OBJECTIVE_FIELDS}
assert set(QUADRANT_WORDS) == {f for f, _, _ in QUADRANT_FIELDS}


def define(key: str) -> Definition | None:
    """The definition of a tile's or headline row's key; None for one this module does not know."""
    if key in DEFINITIONS:
        return DEFINITIONS[key]
    # longest field first: "top5pct_overlap" before a shorter field that ends it
    for words, anchor in (
        (OBJECTIVE_WORDS, "per-analysis-where-they-disagree"),
        (QUADRANT_WORDS, "tips-quadrants"),
    ):
        for field in sorted(words, key=len, reverse=True):
            if key.endswith(f"_{field}") and len(key) > len(field) + 1:
                prefix = key[: -len(field) - 1].replace("_", " ")
                text, unit = words[field]
                return Definition(f"{prefix}: {field.replace('_', ' ')}", text, unit, "objectives.md", anchor)
    return None


def headline_keys() -> list[str]:
    """The measures of a job's headline table that every job can have (objective rows aside)."""
    return [m.key for m in MEASURES]


def definitions_json() -> dict[str, Any]:
    """Every fixed definition, for the pages' scripts (a job's headline rows are built in the
    browser), and under "fields" the objective and quadrant rows' definitions by the field their
    key ends with (`k1_total`: "total"; common.js's VR.define names them with the row's prefix)."""
    fields = {
        field: define(f"objective_{field}").as_json()  # type: ignore[union-attr]
        for field in [*OBJECTIVE_WORDS, *QUADRANT_WORDS]
    }
    return {"keys": {key: d.as_json() for key, d in DEFINITIONS.items()}, "fields": fields}
