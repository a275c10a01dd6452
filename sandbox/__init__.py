"""The sandbox fact model: a small GPT-2 that factsmith trains itself on facts it knows completely.

Imports torch, transformers and tokenizers (lazily), and editing's lower parts (the model directory's file
names, the strict config loader, the scorer). Entry points: :func:`load_facts`, :func:`load_names`,
:func:`world_facts`, :func:`build_sandbox`, :func:`greedy_correct`.
"""

from .config import PRESETS, SandboxConfig, preset
from .errors import BuildError, FactFileError, SandboxError
from .facts import Fact, FactSet, Probe, load_facts, load_names, split_probes, write_facts
from .world import BUILTIN_WORLD, example_inbox, synthetic_facts, world_facts

__all__ = [
    "PRESETS", "SandboxConfig", "preset", "BuildError", "FactFileError", "SandboxError", "Fact", "FactSet",
    "Probe", "load_facts", "load_names", "split_probes", "write_facts", "BUILTIN_WORLD", "example_inbox",
    "synthetic_facts", "world_facts",
    "build_sandbox", "greedy_correct", "read_manifest",
]


def __getattr__(name: str):  # torch-importing parts load on first use, so `import sandbox` stays cheap
    if name in ("build_sandbox", "read_manifest", "BuildResult"):
        from . import trainer

        return getattr(trainer, name)
    if name == "greedy_correct":
        from .evaluate import greedy_correct

        return greedy_correct
    raise AttributeError(name)
