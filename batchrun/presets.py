"""The endpoint presets: what each kind of endpoint needs, so a job file only says what differs.

Every field here can be overridden in the job's ``[endpoint]`` table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

WireFormat = Literal["chat", "custom", "image-hf", "image-openai"]
Auth = Literal["none", "bearer", "header"]


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    description: str
    format: WireFormat
    url: str  # a template: {base_url} and {model} are filled in, Jinja sees the row
    base_url: str | None = None
    api_key_env: str | None = None
    auth: Auth = "bearer"
    needs_key: bool = True
    model: str | None = None
    response_path: str | None = None  # JMESPath into the JSON body, for the custom format
    stream: bool = False


CHAT_PATH = "{base_url}/v1/chat/completions"

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="hf-endpoint",
            description="Hugging Face Inference Endpoint running TGI (OpenAI chat completions)",
            format="chat",
            url=CHAT_PATH,
            api_key_env="HF_TOKEN",
            model="tgi",
            stream=True,  # keeps long generations alive through proxies that cut idle connections
        ),
        Preset(
            name="openai",
            description="OpenAI chat completions",
            format="chat",
            url=CHAT_PATH,
            base_url="https://api.openai.com",
            api_key_env="OPENAI_API_KEY",
        ),
        Preset(
            name="openai-compatible",
            description="any OpenAI-compatible server (vLLM, llama.cpp, Ollama, TGI, HF router...)",
            format="chat",
            url=CHAT_PATH,
            needs_key=False,
        ),
        Preset(
            name="hf-serverless",
            description="HF serverless Inference API: {inputs, parameters} -> [0].generated_text",
            format="custom",
            url="{base_url}/models/{model}",
            base_url="https://api-inference.huggingface.co",
            api_key_env="HF_TOKEN",
            response_path="[0].generated_text",
        ),
        Preset(
            name="hf-text-to-image",
            description="HF text-to-image: {inputs, parameters} -> raw image bytes",
            format="image-hf",
            url="{base_url}/models/{model}",
            base_url="https://router.huggingface.co/hf-inference",
            api_key_env="HF_TOKEN",
        ),
        Preset(
            name="openai-images",
            description="OpenAI images: {prompt, n, size} -> data[0].b64_json",
            format="image-openai",
            url="{base_url}/v1/images/generations",
            base_url="https://api.openai.com",
            api_key_env="OPENAI_API_KEY",
        ),
        Preset(
            name="custom",
            description="any JSON over HTTP: URL template, body template, JMESPath response mapping",
            format="custom",
            url="",
            auth="none",
            needs_key=False,
        ),
        Preset(
            name="simulator",
            description="the built-in local simulator, started on a loopback port for the run",
            format="chat",
            url=CHAT_PATH,
            auth="none",
            needs_key=False,
            model="sim-model",
        ),
    )
}
