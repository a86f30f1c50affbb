"""The served model's own tokenizer, through a vLLM server's `/tokenize` and `/detokenize`
(VROLLOUT_TOKENIZER=server): for when no local copy of the tokenizer is at hand.

Answers the few tokenizer calls the app makes (chat template, encode, decode, the vocabulary
size), each one a request; single-token decodes, which every analysis makes by the hundred,
are cached. End-of-sequence ids are not exposed by the server: they are learned from
completions that stop (`learn_eos`). Knows nothing about metrics or storage.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from vrollout.vllm.client import ReplicaPool

MAX_VOCAB = 1 << 22  # upper end of the search for the vocabulary size


class ServerTokenizer:
    """A stand-in for a Hugging Face tokenizer, answered by the server of `pool`."""

    chat_template = "(the server's)"  # the server applies its own template

    def __init__(self, pool: ReplicaPool, served_name: str) -> None:
        self.pool, self.served_name = pool, served_name
        self._pieces: dict[int, str] = {}
        self._lock = threading.Lock()
        self.eos_token_id: int | None = None
        self.eos_ids: set[int] = set()
        self.vocab_size = self._vocabulary_size()

    def _vocabulary_size(self) -> int:
        """The smallest id the server refuses as out of vocabulary (binary search, ~20 requests)."""
        from vrollout.errors import BadTrajectory

        def known(token: int) -> bool:
            try:
                body = {"model": self.served_name, "prompt": [token], "max_tokens": 1}
                self.pool.post("/v1/completions", body)
                return True
            except BadTrajectory:
                return False

        lo, hi = 0, MAX_VOCAB  # known(lo), not known(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if known(mid) else (lo, mid)
        return hi

    def __len__(self) -> int:
        return self.vocab_size

    def learn_eos(self, token: int) -> None:
        """A completion stopped on `token`: it ends a sequence."""
        self.eos_ids.add(token)
        if self.eos_token_id is None:
            self.eos_token_id = token

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        body = {"model": self.served_name, "prompt": text, "add_special_tokens": add_special_tokens}
        return {"input_ids": self.pool.post("/tokenize", body)["tokens"]}

    def apply_chat_template(
        self, messages: list[dict[str, str]], tokenize: bool = False, add_generation_prompt: bool = True
    ) -> Any:
        body = {
            "model": self.served_name,
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
            "add_special_tokens": False,
        }
        ids = self.pool.post("/tokenize", body)["tokens"]
        return ids if tokenize else self.decode(ids)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        if len(ids) == 1 and ids[0] in self._pieces:
            return self._pieces[ids[0]]
        text = self.pool.post("/detokenize", {"model": self.served_name, "tokens": list(ids)})["prompt"]
        if len(ids) == 1:
            with self._lock:
                self._pieces[ids[0]] = text
        return text

    def batch_decode(self, rows: list[list[int]], skip_special_tokens: bool = False) -> list[str]:
        """Each row decoded; rows are sent at once (single tokens come from the cache after)."""
        workers = max(1, min(len(rows), self.pool.concurrency * len(self.pool.replicas)))
        with ThreadPoolExecutor(workers, thread_name_prefix="vrollout-detok") as pool:
            return list(pool.map(self.decode, rows))
