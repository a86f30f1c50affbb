"""Remote models: the local tokenizer, what a server serves, and the start-up checks that the
two share one vocabulary (token ids sent to a server must mean the same tokens here).
Used by `backend.load_remote_pair`; knows nothing about scoring or generation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vrollout.config import DEFAULT_MODEL, Settings
from vrollout.errors import ModelMismatch
from vrollout.models import LoadedModel, default_model_folder
from vrollout.rules import eos_set
from vrollout.vllm.client import ReplicaPool, ReplicasUnavailable

# Text whose tokenization every server must reproduce: words, digits, code, whitespace runs,
# accents and CJK, emoji (byte fallback), and the chat template's special tokens.
PROBE = (
    "The quick brown fox, 17*23 = 391.\n\tdef f(x):\n        return x ** 2  # ok\n"
    "naïve café Ωμέγα 東京 🙂 <|im_start|>user\nhi<|im_end|>"
)


@dataclass
class RemoteModel(LoadedModel):
    """A model served by vLLM replicas: the tokenizer is local, the weights are not."""

    pool: ReplicaPool | None = None
    served_name: str = ""  # the server's model id (its `/v1/models`)
    eos: set[int] = field(default_factory=set)
    served_dtype: str = "as served"  # read from the server's numbers (`noise.served_dtype`)

    @property
    def device(self) -> str:  # type: ignore[override]
        return "vllm " + " ".join(r.url for r in self.pool.replicas) if self.pool else "vllm"

    @property
    def dtype(self) -> str:  # type: ignore[override]
        return self.served_dtype


def load_tokenizer(settings: Settings) -> tuple[Any, Path | str]:
    """The tokenizer named by VROLLOUT_TOKENIZER, else the student setting's (the embedded
    default's converted folder, a folder, or a Hugging Face id)."""
    from transformers import AutoTokenizer

    spec = settings.tokenizer or settings.student
    path: Path | str = default_model_folder(settings.cache_dir) if spec == DEFAULT_MODEL else spec
    return AutoTokenizer.from_pretrained(path, trust_remote_code=settings.trust_remote_code), path


def eos_ids(tokenizer: Any, path: Path | str) -> set[int]:
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(path).eos_token_id
    except (OSError, ValueError):  # no generation config: the tokenizer's
        eos = None
    return eos_set(eos, tokenizer.eos_token_id)


def check_server(pool: ReplicaPool, tokenizer: Any) -> str:
    """The served model id, after checking that every replica that answers tokenizes the probe
    and decodes a spread of ids exactly as the local tokenizer does."""
    import httpx

    local_ids = tokenizer(PROBE, add_special_tokens=False)["input_ids"]
    V = len(tokenizer)
    sample = sorted({0, 1, 2, V - 1, V - 2, *range(3, V, max(1, V // 61))})
    local_text = tokenizer.decode(sample, skip_special_tokens=False)
    names, answered = set(), 0
    with httpx.Client(timeout=30) as client:
        for replica in pool.replicas:
            try:
                name = client.get(replica.url + "/v1/models").json()["data"][0]["id"]
                ids = client.post(
                    replica.url + "/tokenize",
                    json={"model": name, "prompt": PROBE, "add_special_tokens": False},
                ).json()["tokens"]
                text = client.post(
                    replica.url + "/detokenize", json={"model": name, "tokens": sample}
                ).json()["prompt"]
            except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
                replica.last_error = f"start-up check failed: {exc}"
                replica.failures_in_a_row, replica.errors = 1, 1
                replica.down_until = time.monotonic() + 1.0  # tried again by a later request
                continue
            answered += 1
            names.add(name)
            if ids != local_ids or text != local_text:
                raise ModelMismatch(
                    f"the {pool.role} server {replica.url} ({name}) does not share the local "
                    "tokenizer's vocabulary: token ids would mean different tokens"
                )
    if not answered:
        raise ReplicasUnavailable(f"no {pool.role} server answered: {[r.url for r in pool.replicas]}")
    if len(names) > 1:
        raise ModelMismatch(f"the {pool.role} replicas serve different models: {sorted(names)}")
    return names.pop()
