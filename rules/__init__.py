"""TaskAlign rules engine: the review's guidelines as data, evaluated against a task profile.

Imports only pydantic and PyYAML, so it loads and answers in milliseconds.
"""

from .engine import Engine, default_engine, engine_from
from .knowledge import Knowledge, KnowledgeError, load_knowledge
from .profile import ProfileConflict, TaskProfile
from .recommendation import FinetuneDefaults, Recommendation

__all__ = [
    "Engine",
    "FinetuneDefaults",
    "Knowledge",
    "KnowledgeError",
    "ProfileConflict",
    "Recommendation",
    "TaskProfile",
    "default_engine",
    "engine_from",
    "load_knowledge",
]
