"""Synthetic twin of the instrument's output: particle renderers, acquisition sessions, dataset writer, preview."""

from .dataset import generate
from .preview import contact_sheet
from .render import RENDERERS
from .sessions import Session, acquire, core_sessions, train_sessions

__all__ = ["RENDERERS", "Session", "acquire", "contact_sheet", "core_sessions", "generate", "train_sessions"]
