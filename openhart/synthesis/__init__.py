"""Dataset synthesis: a prompts file in, an image dataset out, on one process or many (torchrun).

* :mod:`~openhart.synthesis.prompts` — ``.txt`` / ``.jsonl`` prompt files, bad lines reported
* :mod:`~openhart.synthesis.plan` — every image's name, seed, batch and shard; the rank split
* :mod:`~openhart.synthesis.writers` — atomic PNG / tar writes, completeness checks, disk errors
* :mod:`~openhart.synthesis.engine` — one rank's run, resume, progress, rank-0 merge and summary
* :mod:`~openhart.synthesis.cli` — ``openhart synthesize`` (and ``python -m openhart.synthesize``)
"""

from openhart.synthesis.engine import (
    SynthesisError,
    SynthesisJob,
    SynthesisSummary,
    load_job_inputs,
    run_synthesis,
)
from openhart.synthesis.plan import Plan, WorkItem, build_plan
from openhart.synthesis.prompts import PromptFileError, PromptLine, read_prompt_file
from openhart.synthesis.writers import OutputFolderError

__all__ = [
    "OutputFolderError",
    "Plan",
    "PromptFileError",
    "PromptLine",
    "SynthesisError",
    "SynthesisJob",
    "SynthesisSummary",
    "WorkItem",
    "build_plan",
    "load_job_inputs",
    "read_prompt_file",
    "run_synthesis",
]
