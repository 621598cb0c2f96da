"""The one place that knows every wire format by name. Adding a format is a class in its own
module (``format.WireFormat``) and one line here; a preset then names it (``presets.py``)."""

from __future__ import annotations

from .chat import ChatFormat
from .custom import CustomFormat, HFServerlessFormat
from .format import WireFormat
from .images import HFImageFormat, OpenAIImageFormat

FORMATS: dict[str, WireFormat] = {
    f.name: f for f in (ChatFormat(), CustomFormat(), HFServerlessFormat(), HFImageFormat(), OpenAIImageFormat())
}


def wire_format(name: str) -> WireFormat:
    return FORMATS[name]
