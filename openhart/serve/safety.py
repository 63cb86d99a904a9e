"""Optional prompt-safety hook: refuse prompts before any image is generated. Off by default.

Legend: V labels of the classifier.

Two kinds, chosen by the server's operator at start-up (never by a client):

- a Python callable named ``module:function`` (``--safety-checker``). It is called with the
  prompt and returns ``None`` (or ``False`` / ``""``) to allow it, or a reason string (or
  ``True``) to refuse it. It must be thread-safe; exceptions refuse the request (fail closed).
- a transformers text-classification model from a local folder (``--safety-model DIR``),
  read with ``local_files_only``: the prompt is refused when the probability of any label named
  in ``--safety-labels`` reaches ``--safety-threshold``. The official HART demo screens prompts
  the same way with a ShieldGemma classifier.

Both are wrapped as a :class:`SafetyChecker`: ``checker(prompt) -> reason | None``.
"""

from __future__ import annotations

import importlib
import logging
import math
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SafetyHook = Callable[[str], object]


class SafetyChecker:
    """``checker(prompt)`` → ``None`` when allowed, else the reason for refusing."""

    kind: str = "callable"

    def __init__(self, hook: SafetyHook, name: str) -> None:
        if not callable(hook):
            raise TypeError(f"safety hook {name!r} is not callable")
        self.hook = hook
        self.name = name

    def __call__(self, prompt: str) -> str | None:
        verdict = self.hook(prompt)
        if verdict is None or verdict is False or verdict == "":
            return None
        if isinstance(verdict, str):
            return verdict
        return "refused by the prompt-safety checker"

    def describe(self) -> str:
        return f"{self.kind}: {self.name}"


def load_callable(spec: str) -> SafetyChecker:
    """``"package.module:function"`` (attributes may be dotted: ``module:obj.method``) → checker."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ValueError(f"safety_checker must look like 'module:function', got {spec!r}")
    module_name, attribute = spec.split(":")
    if not module_name or not attribute:
        raise ValueError(f"safety_checker must look like 'module:function', got {spec!r}")
    try:
        target: object = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"safety_checker: cannot import module {module_name!r}: {error}") from error
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"safety_checker: {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"safety_checker: {spec!r} is not callable")
    return SafetyChecker(target, spec)  # type: ignore[arg-type]


class ClassifierSafetyChecker(SafetyChecker):
    """A transformers sequence classifier from a local folder; refuses when P(unsafe label) ≥ threshold."""

    kind = "classifier"

    def __init__(
        self,
        model_dir: str | Path,
        unsafe_labels: Sequence[str],
        threshold: float = 0.5,
        max_tokens: int = 512,
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = Path(model_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"safety_model: no such folder: {folder}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise ValueError(f"safety_threshold must be in (0, 1], got {threshold!r}")
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True).eval()
        id2label = {int(i): str(label) for i, label in self.model.config.id2label.items()}
        known = sorted(id2label.values())
        if not unsafe_labels:
            raise ValueError(f"safety_labels: name the label(s) that mean unsafe; this model has {known}")
        unknown = sorted(set(unsafe_labels) - set(known))
        if unknown:
            raise ValueError(f"safety_labels: {unknown} are not labels of this model; it has {known}")
        self.unsafe_ids = sorted(i for i, label in id2label.items() if label in set(unsafe_labels))
        self.id2label = id2label
        self.threshold = float(threshold)
        # Some tokenizers report a huge sentinel as their maximum length.
        self.max_tokens = min(max_tokens, getattr(self.tokenizer, "model_max_length", max_tokens))
        # A multi-label head is read with independent sigmoids, a single-label one with a softmax.
        self.multi_label = self.model.config.problem_type == "multi_label_classification"
        self._lock = threading.Lock()  # tokenizers and modules are not promised to be thread-safe
        self.name = folder.name

    @torch.no_grad()
    def probabilities(self, prompt: str) -> torch.Tensor:
        """(V,) probability of each label for ``prompt``."""
        with self._lock:
            inputs = self.tokenizer(prompt, truncation=True, max_length=self.max_tokens, return_tensors="pt")
            logits = self.model(**inputs).logits[0].float()  # (V,)
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)

    def __call__(self, prompt: str) -> str | None:
        probabilities = self.probabilities(prompt)
        scores = {self.id2label[i]: float(probabilities[i]) for i in self.unsafe_ids}
        label, score = max(scores.items(), key=lambda item: item[1])
        if math.isnan(score) or score >= self.threshold:
            return f"classified as {label!r} (p = {score:.2f} ≥ {self.threshold:.2f})"
        return None


def build_safety_checker(
    callable_spec: str | None = None,
    model_dir: str | Path | None = None,
    unsafe_labels: Sequence[str] = (),
    threshold: float = 0.5,
) -> SafetyChecker | None:
    """The configured checker, or None when both are unset (the default)."""
    if callable_spec and model_dir:
        raise ValueError("use either safety_checker (a callable) or safety_model (a classifier), not both")
    if callable_spec:
        checker = load_callable(callable_spec)
    elif model_dir:
        checker = ClassifierSafetyChecker(model_dir, unsafe_labels, threshold)
    else:
        return None
    logger.info("prompt-safety checker on: %s", checker.describe())
    return checker
