"""Writer code copied verbatim from training frameworks, for the presets' tests (tests/core/test_presets.py).

Copied, not imported, where the framework's module cannot be imported here: verl's
`verl/trainer/ppo/ray_trainer.py` imports ray, omegaconf, torchdata and verl's workers at module
level (installing verl pulls vLLM/ray-sized dependencies), so the static writer behind
`trainer.rollout_data_dir` is reproduced below exactly as in the verl 0.9.1 wheel
(`RayPPOTrainer._write_generations`, a @staticmethod with no other dependency than json and os).
TRL is imported for real (the tests run a GRPOTrainer step); tinker-cookbook's logtree module is
stdlib-only and is imported from the installed package where present.
"""

import json
import os


# verl 0.9.1, verl/trainer/ppo/ray_trainer.py, RayPPOTrainer._write_generations (verbatim).
def _write_generations(inputs, outputs, gts, scores, reward_extra_infos_dict, dump_path, global_steps):
    """Write generation samples as JSONL (runs in background thread)."""
    os.makedirs(dump_path, exist_ok=True)
    filename = os.path.join(dump_path, f"{global_steps}.jsonl")

    n = len(inputs)
    base_data = {
        "input": inputs,
        "output": outputs,
        "gts": gts,
        "score": scores,
        "step": [global_steps] * n,
    }

    for k, v in reward_extra_infos_dict.items():
        if len(v) == n:
            base_data[k] = v

    with open(filename, "w") as f:
        for i in range(n):
            entry = {k: v[i] for k, v in base_data.items()}
            f.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")

    print(f"Dumped generations to {filename}")


verl_write_generations = _write_generations
