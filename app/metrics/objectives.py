"""The distillation objectives of training frameworks, per token and per analysis
(docs/objectives.md): which options they take, k1 and k3 from the sampled token's two
log-probs, and how each objective's per-step signal compares with the exact reverse KL
(total, bias, rank correlation, overlap with its top 5%, Gini, what a clip removes), plus TIP's
entropy x divergence quadrants. Pure arithmetic on lists; the vocabulary-wide objectives are
computed in the local engine's chunk loop (local/metrics.py). No torch, no HTTP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from vrollout.metrics.signal import concentration, top_count
from vrollout.schema.analysis import OBJECTIVE_NAMES

SAMPLED = ("k1", "k3")  # need only the sampled token's two log-probs: every backend has them
DEFAULT_K = 20  # the teacher's top-k of the top-k objectives: vLLM's cap on returned log-probs
DEFAULT_JSD_BETA = 0.5  # TRL's GKDConfig.beta default
DEFAULT_CLIP_TAU = 0.05  # slime's --opsd-jsd-clip default
CLIPPED = {"clipped_reverse_kl": "reverse_kl", "clipped_jsd": "jsd"}  # clipped -> what it clips
QUADRANTS = (
    "high_entropy_high_divergence",
    "high_entropy_low_divergence",
    "low_entropy_high_divergence",
    "low_entropy_low_divergence",
)


@dataclass(frozen=True)
class ObjectiveSpec:
    """Which objectives to compute and their options (the request's `objectives`,
    `objective_k`, `jsd_beta`, `clip_tau`, `tip_*_threshold`; docs/objectives.md)."""

    names: tuple[str, ...] = OBJECTIVE_NAMES
    k: int = DEFAULT_K
    jsd_beta: float = DEFAULT_JSD_BETA
    clip_tau: float = DEFAULT_CLIP_TAU
    entropy_threshold: float | None = None  # None: this analysis's median student entropy
    divergence_threshold: float | None = None  # None: its median reverse KL

    def __post_init__(self) -> None:
        unknown = [n for n in self.names if n not in OBJECTIVE_NAMES]
        if unknown:
            raise ValueError(f"unknown objective(s) {unknown}: choose from {', '.join(OBJECTIVE_NAMES)}")
        if self.k < 1:
            raise ValueError(f"objective_k must be at least 1, got {self.k}")
        if not 0.0 <= self.jsd_beta <= 1.0:
            raise ValueError(f"jsd_beta must be in [0, 1], got {self.jsd_beta}")
        if not self.clip_tau > 0.0:
            raise ValueError(f"clip_tau must be above 0, got {self.clip_tau}")

    def engine_names(self) -> tuple[str, ...]:
        """The asked-for objectives that need the whole vocabulary (the local engine's)."""
        return tuple(n for n in self.names if n not in SAMPLED)

    def record(self) -> dict[str, Any]:
        """The analysis's `objective_options`."""
        return {
            "objectives": list(self.names),
            "objective_k": self.k,
            "jsd_beta": self.jsd_beta,
            "clip_tau": self.clip_tau,
            "tip_entropy_threshold": self.entropy_threshold,
            "tip_divergence_threshold": self.divergence_threshold,
        }


def k1(student_logprob: float, teacher_logprob: float) -> float:
    """tinker-cookbook's per-token reverse KL sample (and verl's "k1"): log p_s(y) − log p_t(y)."""
    return student_logprob - teacher_logprob


def k3(student_logprob: float, teacher_logprob: float) -> float:
    """Schulman's k3 (verl's "k3"/"low_var_kl", without verl's clamps): (r − 1) − log r with
    r = p_t(y) / p_s(y). expm1 keeps it exact where r is near 1 (the value is O((log r)²))."""
    log_r = teacher_logprob - student_logprob
    return math.expm1(log_r) - log_r


def step_objectives(
    spec: ObjectiveSpec, student_logprob: float, teacher_logprob: float, computed: dict[str, Any]
) -> dict[str, Any]:
    """One step's `objectives`: k1 and k3 from its two log-probs, the rest from `computed` (the
    engine's values at this step), null where the backend computed none; `clip_hit` with a
    clipped objective."""
    out: dict[str, Any] = {}
    for name in spec.names:
        if name == "k1":
            out[name] = k1(student_logprob, teacher_logprob)
        elif name == "k3":
            out[name] = k3(student_logprob, teacher_logprob)
        else:
            out[name] = computed.get(name)
    if any(name in CLIPPED for name in spec.names):
        out["clip_hit"] = computed.get("clip_hit")
    return out


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties given the mean of the ranks they span (as scipy's rankdata)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for m in range(i, j + 1):
            out[order[m]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation (Pearson's on tie-averaged ranks); None under 2 values or
    where either side is constant."""
    if len(a) < 2:
        return None
    ra, rb = ranks(a), ranks(b)
    mean = (len(a) + 1) / 2
    cov = math.fsum((x - mean) * (y - mean) for x, y in zip(ra, rb, strict=True))
    var_a = math.fsum((x - mean) ** 2 for x in ra)
    var_b = math.fsum((y - mean) ** 2 for y in rb)
    if var_a == 0 or var_b == 0:
        return None
    return cov / math.sqrt(var_a * var_b)


def top5pct_overlap(values: list[float], exact: list[float]) -> float | None:
    """The share of Σ|values| on the ceil(5% · T) steps with the largest exact reverse KL
    (ties by position); None when Σ|values| is 0."""
    mass = [abs(v) for v in values]
    total = math.fsum(mass)
    if not values or total <= 0:
        return None
    top = sorted(range(len(exact)), key=lambda t: (-exact[t], t))[: top_count(5, len(exact))]
    return math.fsum(mass[t] for t in top) / total


def objective_summary(
    values: list[float | None], exact: list[float], unclipped: list[float | None] | None = None
) -> dict[str, Any]:
    """`summary.objectives[NAME]` from its per-step values and the exact per-step reverse KL;
    `unclipped`: for a clipped objective, the values it clips (its `clipped_share`)."""
    out: dict[str, Any]
    if any(v is None for v in values):
        out = dict.fromkeys(("total", "bias", "spearman", "top5pct_overlap", "gini"))
    else:
        known = [float(v) for v in values if v is not None]
        total = math.fsum(known)
        out = {
            "total": total,
            "bias": total - math.fsum(exact),
            "spearman": spearman(known, exact),
            "top5pct_overlap": top5pct_overlap(known, exact),
            "gini": concentration([abs(v) for v in known])["gini"],
        }
    if unclipped is not None:
        out["clipped_share"] = clipped_share(values, unclipped)
    return out


def clipped_share(clipped: list[float | None], unclipped: list[float | None]) -> float | None:
    """1 − Σ clipped / Σ unclipped: the share of the mass the clip removes (None where either is
    unknown or the unclipped total is 0)."""
    if any(v is None for v in (*clipped, *unclipped)):
        return None
    total = math.fsum(float(v) for v in unclipped if v is not None)
    if total <= 0:
        return None
    return 1.0 - math.fsum(float(v) for v in clipped if v is not None) / total


def summarize_objectives(steps: list[dict[str, Any]], spec: ObjectiveSpec) -> dict[str, Any]:
    """`summary.objectives`: one `objective_summary` per objective asked for."""
    exact = [s["reverse_kl"] for s in steps]
    out = {}
    for name in spec.names:
        values = [s["objectives"][name] for s in steps]
        unclipped = None
        if name in CLIPPED:
            source = CLIPPED[name]
            if source == "reverse_kl":
                unclipped = list(exact)
            else:  # jsd: known only if it was asked for too
                unclipped = [s["objectives"].get(source) for s in steps]
        out[name] = objective_summary(values, exact, unclipped)
    return out


def median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def quadrants(
    entropies: list[float],
    divergences: list[float],
    entropy_threshold: float | None,
    divergence_threshold: float | None,
) -> dict[str, Any]:
    """TIP's quadrants (arXiv 2604.14084): each step placed by the student's entropy and the
    exact reverse KL, high meaning strictly above the threshold (default: the analysis's median,
    as the paper gives no fixed numbers); each quadrant's share of the tokens and of the reverse
    KL (null where the total is 0)."""
    given = entropy_threshold is not None and divergence_threshold is not None
    h = median(entropies) if entropy_threshold is None else entropy_threshold
    d = median(divergences) if divergence_threshold is None else divergence_threshold
    n, total = len(entropies), math.fsum(divergences)
    tokens = dict.fromkeys(QUADRANTS, 0)
    signal = dict.fromkeys(QUADRANTS, 0.0)
    if h is not None and d is not None:
        for e, kl in zip(entropies, divergences, strict=True):
            name = f"{'high' if e > h else 'low'}_entropy_{'high' if kl > d else 'low'}_divergence"
            tokens[name] += 1
            signal[name] += kl
    return {
        "entropy_threshold": h,
        "divergence_threshold": d,
        "split": "given" if given else "median",
        **{
            q: {"tokens": tokens[q] / n if n else None, "signal": signal[q] / total if total > 0 else None}
            for q in QUADRANTS
        },
    }
