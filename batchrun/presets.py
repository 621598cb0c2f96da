"""The endpoint presets, as data: a wire format (``endpoints/registry.py``) plus the defaults of one
kind of endpoint, so a job file only says what differs.

Every field here can be overridden in the job's ``[endpoint]`` table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Auth = Literal["none", "bearer", "header"]


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    description: str
    format: str  # the name of a wire format in endpoints.registry.FORMATS
    # a template ({base_url} and {model} are filled in, Jinja sees the row); None: the format's route
    url: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    auth: Auth = "bearer"
    needs_key: bool = True
    model: str | None = None
    response_path: str | None = None  # JMESPath into the JSON body, for the custom format
    stream: bool = False
    simulated: bool = False  # the run starts the built-in simulator and sends there


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="hf-endpoint",
            description="Hugging Face Inference Endpoint running TGI (OpenAI chat completions)",
            format="chat",
            api_key_env="HF_TOKEN",
            model="tgi",
            stream=True,  # keeps long generations alive through proxies that cut idle connections
        ),
        Preset(
            name="openai",
            description="OpenAI chat completions",
            format="chat",
            base_url="https://api.openai.com",
            api_key_env="OPENAI_API_KEY",
        ),
        Preset(
            name="openai-compatible",
            description="any OpenAI-compatible server (vLLM, llama.cpp, Ollama, TGI, HF router...)",
            format="chat",
            needs_key=False,
        ),
        Preset(
            name="hf-serverless",
            description="HF serverless Inference API: {inputs, parameters} -> [0].generated_text",
            format="hf-serverless",
            base_url="https://api-inference.huggingface.co",
            api_key_env="HF_TOKEN",
            response_path="[0].generated_text",
        ),
        Preset(
            name="hf-text-to-image",
            description="HF text-to-image: {inputs, parameters} -> raw image bytes",
            format="image-hf",
            base_url="https://router.huggingface.co/hf-inference",
            api_key_env="HF_TOKEN",
        ),
        Preset(
            name="openai-images",
            description="OpenAI images: {prompt, n, size} -> data[0].b64_json",
            format="image-openai",
            base_url="https://api.openai.com",
            api_key_env="OPENAI_API_KEY",
        ),
        Preset(
            name="custom",
            description="any JSON over HTTP: URL template, body template, JMESPath response mapping",
            format="custom",
            auth="none",
            needs_key=False,
        ),
        Preset(
            name="simulator",
            description="the built-in local simulator, started on a loopback port for the run",
            format="chat",
            auth="none",
            needs_key=False,
            model="sim-model",
            simulated=True,
        ),
    )
}
